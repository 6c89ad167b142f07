"""A real RTSP server (Debian's gst-rtsp-server through the system python3-gi) for the tests.

Run with the SYSTEM python (/usr/bin/python3), not the venv:
    /usr/bin/python3 tests/rtsp_server.py --port 8554 --mount /cam --width 320 --height 240 --fps 30
Serves a live H.264 test pattern (a moving ball) at rtsp://127.0.0.1:PORT/MOUNT over TCP/UDP.
With --mounts N it also serves N more cameras at MOUNT1 .. MOUNTN (e.g. /cam1 .. /cam8), each
its own live encoder. Prints "ready" on stdout once listening.
"""

import argparse
import signal
import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--mount", default="/cam")
    parser.add_argument("--width", type=int, default=320)
    parser.add_argument("--height", type=int, default=240)
    parser.add_argument("--fps", type=int, default=30)
    parser.add_argument("--mounts", type=int, default=0, help="also serve MOUNT1 .. MOUNTN")
    args = parser.parse_args()

    Gst.init(None)
    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(str(args.port))
    factory = GstRtspServer.RTSPMediaFactory()
    factory.set_launch(
        f"( videotestsrc is-live=true pattern=ball ! "
        f"video/x-raw,width={args.width},height={args.height},framerate={args.fps}/1 ! "
        f"x264enc tune=zerolatency speed-preset=ultrafast key-int-max={args.fps} bitrate=800 ! "
        f"rtph264pay name=pay0 pt=96 config-interval=1 )"
    )
    factory.set_shared(True)
    server.get_mount_points().add_factory(args.mount, factory)
    for i in range(1, args.mounts + 1):  # more cameras: one factory (one encoder) per mount
        more = GstRtspServer.RTSPMediaFactory()
        more.set_launch(factory.get_launch())
        more.set_shared(True)
        server.get_mount_points().add_factory(f"{args.mount}{i}", more)
    if server.attach(None) == 0:
        print("cannot listen", flush=True)
        return 1
    loop = GLib.MainLoop()
    signal.signal(signal.SIGTERM, lambda *_: loop.quit())
    signal.signal(signal.SIGINT, lambda *_: loop.quit())
    GLib.timeout_add(200, lambda: True)  # lets Python signal handlers run inside the GLib loop
    print("ready", flush=True)
    loop.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())

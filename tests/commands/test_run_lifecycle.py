"""`segstream run` under the one lifecycle, as a real process on a real Redis: a signal drains
(every frame decoded is published, then the end of stream). A second signal aborting at once is
tests/pipeline/test_live_faults.py::test_a_second_ctrl_c_aborts_at_once_and_leaves_a_playable_video."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

from media import write_clip
from servers import wait_for

SEGSTREAM = str(Path(sys.executable).with_name("segstream"))


def entries(client, key: str) -> list[dict]:
    return [json.loads(f[b"data"]) for _, f in client.xrange(key)]


def test_a_file_run_stopped_with_sigterm_drains_publishes_eos_and_exits_zero(tmp_path, redis_url, redis_client):
    clip = write_clip(tmp_path / "long.mp4", frames=600, width=320, height=180)
    process = subprocess.Popen([SEGSTREAM, "run", str(clip), "--redis", redis_url, "--input-size", "128x224",
                                "--no-progress"], stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: redis_client.xlen("segstream:long") >= 10 or process.poll() is not None, 120, "first frames")
        process.send_signal(signal.SIGTERM)
        asked = time.monotonic()
        _, stderr = process.communicate(timeout=60)
        took = time.monotonic() - asked
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, stderr
    assert "Traceback" not in stderr and "SIGTERM received" in stderr, stderr
    assert took < 10 + 3, f"drained within shutdown_timeout (10 s): took {took:.1f} s"
    published = entries(redis_client, "segstream:long")
    frames, eos = published[:-1], published[-1]
    assert eos.get("eos") and eos["interrupted"], "the end of stream says the file was cut short"
    assert [m["frame"] for m in frames] == list(range(eos["frames"])) and 10 <= eos["frames"] < 600, \
        "every frame decoded before the signal was published, in order"
    assert f"long: {len(frames)} frames published" in stderr, stderr

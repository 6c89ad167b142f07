"""One source policy, applied wherever a source enters: the HTTP API, a config's `streams:`, the CLI,
fleet jobs and fleet cameras (config section `sources`, docs/security-sources.md).

    check_source("rtsp://10.0.0.7/live", SourcesSection(), origin="api") -> Admitted(location, scheme, ...)
    check_source("gopher://127.0.0.1:6379/_SET", ...)                     -> raises SourceRefused

An allow-list, judged before anything is opened: a URL's scheme must be one of `sources.schemes`;
a location without a scheme is a local path (a file, or /dev/video*). Everything else is refused:
FFmpeg would otherwise treat `file:`, `concat:`, `subfile,`, `data:`, `pipe:`, `gopher://`, ...
as protocols of its own. Refused everywhere: control characters (raw or percent-encoded: some
protocol handlers decode them, and a CR LF in an rtsp:// URL writes commands into whatever listens
on that port), URLs over MAX_URL_LENGTH, listening modes unless `sources.allow_listen`. Local paths
from the API only under `sources.media_root` (resolved, symlinks followed), all refused with one
text so the API cannot probe the disk; from trusted origins (the CLI, a config file, fleet jobs and
cameras) anywhere, or only under the media root when one is set.

Pure: no I/O but resolving a local path. `protocol_whitelist(scheme)` is what FFmpeg may open
for that scheme, nested URLs (redirects, playlists) included.
"""

from __future__ import annotations

import ipaddress
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal
from urllib.parse import parse_qsl, unquote, urlsplit

from segstream.pipeline.sources.locations import redact
from segstream.pipeline.streams import SourceError

if TYPE_CHECKING:
    from segstream.pipeline.config import SourcesSection

Origin = Literal["api", "trusted"]

#: Longest URL or path accepted (bytes of UTF-8 are not counted: characters).
MAX_URL_LENGTH = 2048
#: What `sources.schemes` holds by default: network feeds and files over http(s).
DEFAULT_SCHEMES = ("rtsp", "rtsps", "rtmp", "rtmps", "srt", "udp", "http", "https")
#: What `sources.schemes` may name at all, with the FFmpeg protocols each needs (nested URLs
#: included: an RTSP server may redirect, an HLS playlist names its segments, an HTTP server
#: may answer 302). Protocols that read local data or run commands (file, concat, subfile, pipe,
#: fd, data, unix, gopher, ...) are never among them.
PROTOCOLS: dict[str, str] = {
    "rtsp": "rtsp,rtsps,tcp,tls,udp,rtp",
    "rtsps": "rtsp,rtsps,tcp,tls,udp,rtp",
    "rtmp": "rtmp,rtmps,tcp,tls",
    "rtmps": "rtmp,rtmps,tcp,tls",
    "srt": "srt",
    "udp": "udp",
    "rtp": "rtp,udp",
    "tcp": "tcp",
    "http": "http,https,tls,tcp,crypto",
    "https": "http,https,tls,tcp,crypto",
}
#: A local file or device: FFmpeg's file protocol only (a local playlist cannot reach the network).
LOCAL_PROTOCOLS = "file"
#: Query keys that make FFmpeg listen instead of connect (tcp `listen`, rtmp `rtmp_listen`,
#: srt `mode=listener|rendezvous`, `localport`/`localaddr` binding a receiving socket).
_LISTEN_KEYS = ("listen", "rtmp_listen", "rtsp_flags", "localport", "localaddr", "localrtpport", "localrtcpport")

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):")
_PERCENT_CONTROL = re.compile(r"%(?:[01][0-9a-fA-F]|7[fF])")


class SourceRefused(SourceError, ValueError):
    """The source policy refused a location; the message is one line and never echoes secrets."""


@dataclass(frozen=True)
class Admitted:
    """A location the policy let through.

    location: what to open (a URL with its scheme lower-cased, or a local path made absolute
    and resolved, so FFmpeg can never read a prefix of it as a protocol); scheme: the URL's
    scheme or "" for a local path; protocols: the `protocol_whitelist` for FFmpeg.
    """

    location: str
    scheme: str
    protocols: str

    @property
    def local(self) -> bool:
        return self.scheme == ""


def shown(location: str, limit: int = 120) -> str:
    """A location as an error may show it: redacted, control characters escaped, at most `limit` chars."""
    text = redact(location) if len(location) <= MAX_URL_LENGTH else location[:limit]
    text = "".join(ch if not _is_control(ch) else repr(ch)[1:-1] for ch in text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _is_control(ch: str) -> bool:
    return unicodedata.category(ch) == "Cc"


def scheme_of(location: str) -> str:
    """The lower-cased scheme of a URL, or "" for a local path (`/a/b.mp4`, `clip.mp4`, `./x:y.mp4`)."""
    match = _SCHEME.match(location)
    return match.group(1).lower() if match else ""


def protocol_whitelist(location: str) -> str:
    """The FFmpeg `protocol_whitelist` for opening `location` (an admitted one)."""
    scheme = scheme_of(location)
    return PROTOCOLS.get(scheme, "") if scheme else LOCAL_PROTOCOLS


def local_refusal(origin: Origin) -> str:
    """The one text every refused local path gets through the API (missing, outside, not a video)."""
    return "url: no readable video file at that path under the media root" if origin == "api" else ""


def check_source(location: str, policy: "SourcesSection", origin: Origin = "trusted") -> Admitted:
    """Judge `location` before anything is opened; raises SourceRefused with one line naming the cause.

    origin: "api" for what arrives over HTTP (and what it persisted), "trusted" for the CLI, a
    config file, fleet jobs and cameras (written by people who can already write to the machine or Redis).
    """
    if not isinstance(location, str) or not location:
        raise SourceRefused("url: empty")
    if len(location) > MAX_URL_LENGTH:
        raise SourceRefused(f"url: {len(location)} characters, at most {MAX_URL_LENGTH} are accepted")
    _refuse_controls(location)
    scheme = scheme_of(location)
    if not scheme:
        return _local(location, policy, origin)
    if scheme not in policy.schemes:
        allowed = " ".join(policy.schemes) or "none"
        why = "file: URLs are not accepted, give a path" if scheme == "file" else f"scheme {scheme!r} is not allowed"
        raise SourceRefused(f"url: {why} (sources.schemes: {allowed}): {shown(location)}")
    if not location[len(scheme) + 1:].startswith("//"):
        raise SourceRefused(f"url: {scheme} URLs look like {scheme}://host/...: {shown(location)}")
    try:
        parts = urlsplit(location)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as exc:
        raise SourceRefused(f"url: not a valid URL ({exc}): {shown(location)}") from None
    if not policy.allow_listen:
        _refuse_listening(scheme, parts, location)
    if not parts.hostname and scheme not in ("udp", "rtp") and not (policy.allow_listen and scheme in ("srt", "tcp")):
        raise SourceRefused(f"url: no host in {shown(location)}")
    return Admitted(scheme + location[len(scheme):], scheme, PROTOCOLS[scheme])


def _refuse_controls(location: str) -> None:
    text = location
    for _ in range(3):  # %250d decodes to %0d, which decodes to CR: look through a few layers
        if any(_is_control(ch) for ch in text) or _PERCENT_CONTROL.search(text):
            raise SourceRefused(f"url: contains control characters (raw or percent-encoded): {shown(location)}")
        decoded = unquote(text)
        if decoded == text:
            return
        text = decoded


def _refuse_listening(scheme: str, parts, location: str) -> None:
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        key = key.lower()
        srt_server = scheme == "srt" and key == "mode" and value.lower() != "caller"  # listener, rendezvous
        if key in _LISTEN_KEYS or key.startswith("listen") or srt_server:
            raise SourceRefused(f"url: {key}={value[:20]} makes the service listen for connections; "
                                f"refused unless sources.allow_listen: {shown(location)}")
    if scheme in ("udp", "rtp"):
        # Receiving UDP binds a local port; only a multicast group (a camera's stream joined, not
        # a port opened to anyone) is not listening.
        host = parts.hostname or ""
        try:
            multicast = ipaddress.ip_address(host).is_multicast
        except ValueError:
            multicast = False
        if not multicast:
            raise SourceRefused(f"url: {scheme}:// from a unicast or local address binds a port to receive on "
                                f"(listening); only multicast groups are accepted unless sources.allow_listen: "
                                f"{shown(location)}")
    elif scheme == "srt" and (parts.hostname or "") in ("", "0.0.0.0", "::"):
        raise SourceRefused(f"url: srt:// without a host listens; refused unless sources.allow_listen: {shown(location)}")


def _local(location: str, policy: "SourcesSection", origin: Origin) -> Admitted:
    """A local path: resolved (symlinks followed), kept under the media root when there is one."""
    root = policy.media_root
    if origin == "api" and root is None:
        raise SourceRefused("url: local files are not accepted over the API (no sources.media_root is configured); "
                            "give a camera or http(s) URL")
    try:
        path = Path(location).expanduser() if origin == "trusted" else Path(location)
        resolved = path.resolve(strict=False)
    except (OSError, RuntimeError, ValueError):  # a symlink loop, a name too long
        if origin == "api":
            raise SourceRefused(local_refusal(origin)) from None
        raise SourceRefused(f"cannot resolve the path {shown(location)}") from None
    if str(resolved).startswith("/dev/video"):
        if origin == "api" and not _under(resolved, Path(root)):
            raise SourceRefused(local_refusal(origin))
        return Admitted(str(resolved), "", LOCAL_PROTOCOLS)
    if root is not None:
        base = Path(root).resolve(strict=False)
        if not _under(resolved, base):
            if origin == "api":
                raise SourceRefused(local_refusal(origin))
            raise SourceRefused(f"{shown(location)} is outside sources.media_root ({root})")
    return Admitted(str(resolved), "", LOCAL_PROTOCOLS)


def _under(path: Path, root: Path) -> bool:
    return path == root or root in path.parents

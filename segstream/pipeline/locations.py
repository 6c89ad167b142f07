"""Where a stream comes from: its kind (a finite file or a live feed), its default id, and its
URL as shown to people (password redacted everywhere: logs, status entries, errors, the API).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit, urlunsplit

#: Feeds that never end on their own: re-joined when they drop, frames dropped when late.
LIVE_SCHEMES = ("rtsp://", "rtsps://", "rtmp://", "rtmps://", "udp://", "rtp://", "srt://", "tcp://")
#: Finite files read over the network: every frame, then EOS, like a local file.
REMOTE_FILE_SCHEMES = ("http://", "https://")

Kind = Literal["file", "live"]


def source_kind(location: str, override: str | None = None) -> Kind:
    """`live` for camera URLs and /dev/video*, `file` otherwise (http(s):// too); override wins."""
    if override in ("file", "live"):
        return override  # type: ignore[return-value]
    lowered = location.lower()
    if lowered.startswith(LIVE_SCHEMES) or lowered.startswith("/dev/video"):
        return "live"
    return "file"


def is_remote(location: str) -> bool:
    return "://" in location


def default_stream_id(location: str) -> str:
    """File stem for files and file URLs; the last path part of a camera URL (or its host)."""
    if not is_remote(location):
        return Path(location).stem
    rest = location.split("://", 1)[1].split("?", 1)[0]
    host, _, path = rest.partition("/")
    host = host.rsplit("@", 1)[-1].split(":")[0]
    if source_kind(location) == "file" and path:
        return Path(path).stem
    tail = path.strip("/").replace("/", "-")
    return tail or host


def redact(url: str) -> str:
    """The URL with its password replaced by ***, for anything a person or a log sees."""
    if "://" not in url:
        return url
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        password = None
    if password is None:
        # Unparseable netlocs still must not leak: hide anything between ':' and '@' in it.
        return re.sub(r"(://[^/@:]*:)[^/@]*@", r"\1***@", url)
    netloc = parts.netloc.replace(f":{password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def redact_text(text: str, url: str) -> str:
    """`text` (e.g. an FFmpeg error) with `url`'s password removed wherever it appears."""
    try:
        password = urlsplit(url).password
    except ValueError:
        password = None
    text = text.replace(url, redact(url))
    return text.replace(password, "***") if password else text

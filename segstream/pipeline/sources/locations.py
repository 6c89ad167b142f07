"""Where a stream comes from: its kind (a finite file or a live feed), its default id, and its
URL as shown to people (secrets redacted everywhere: logs, status entries, errors, the API, the fleet).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal
from urllib.parse import unquote

from segstream.pipeline.wire.stream_id import stream_id_from

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
    """File stem for files and file URLs; the path of a camera URL (or its host), made to follow
    the stream-id rule (pipeline/wire/stream_id.py): other characters become "-", 64 at most."""
    if not is_remote(location):
        return stream_id_from(Path(location).stem)
    rest = location.split("://", 1)[1].split("?", 1)[0]
    host, _, path = rest.partition("/")
    host = host.rsplit("@", 1)[-1].split(":")[0]
    if source_kind(location) == "file" and path:
        return stream_id_from(Path(path).stem)
    tail = path.strip("/").replace("/", "-")
    return stream_id_from(tail or host)


#: Query parameters whose name contains one of these (case-insensitive) carry a secret.
SECRET_PARAMETER_WORDS = ("pass", "pwd", "token", "key", "secret", "sig", "auth", "credential", "session",
                          "cookie", "jwt", "bearer")
HIDDEN = "***"


def secret_parameter(name: str) -> bool:
    """True for query parameter names that carry secrets: password, passwd, pwd, token, key, apikey,
    x-api-key, access_token, secret, signature, sig, auth, credential(s), ... (case-insensitive)."""
    lowered = name.lower()
    return any(word in lowered for word in SECRET_PARAMETER_WORDS)


def _split(url: str) -> tuple[str, str | None, str, str | None, str]:
    """(scheme, user info or None, host and path, query or None, fragment with its '#').

    By hand rather than with urlsplit: a URL it refuses (a bad port, a stray bracket) must still
    not leak, and a raw '/' or '@' inside a password must not move the secret into the "path". So
    the user info runs up to the last '@' before the query."""
    scheme, _, rest = url.partition("://")
    end = min([i for i in (rest.find("?"), rest.find("#")) if i >= 0], default=len(rest))
    at = rest.rfind("@", 0, end)
    userinfo = rest[:at] if at >= 0 else None
    after = rest[at + 1:] if at >= 0 else rest
    body, q, query = after.partition("?")
    fragment = ""
    if q:
        query, h, fragment = query.partition("#")
        fragment = h + fragment
    else:
        body, h, fragment = body.partition("#")
        fragment = h + fragment
    return scheme, userinfo, body, (query if q else None), fragment


def _parameters(query: str) -> list[tuple[str, str, bool]]:
    """(name, value, has '=') of each `&`/`;` separated piece."""
    out = []
    for piece in re.split(r"[&;]", query):
        name, eq, value = piece.partition("=")
        out.append((name, value, bool(eq)))
    return out


def redact(url: str) -> str:
    """The URL with its secrets replaced by ***, for anything a person or a log sees: the password
    (`user:***@`), a user name given alone (`***@`, often a token) and the values of query parameters
    whose names carry secrets (`?user=admin&password=***`). Local paths are returned as they are.
    An '@' in a path hides what precedes it too: shown less, never leaked."""
    if "://" not in url:
        return url
    scheme, userinfo, body, query, fragment = _split(url)
    shown = f"{scheme}://"
    if userinfo is not None:
        user, colon, _password = userinfo.partition(":")
        # user:password -> user:***; a user name alone is often the secret itself (rtsp://TOKEN@cam/s)
        shown += f"{user}:{HIDDEN}@" if colon else f"{HIDDEN}@"
    shown += body
    if query is not None:
        pieces = re.split(r"([&;])", query)
        shown += "?" + "".join(p if p in ("&", ";") else _piece_redacted(p) for p in pieces)
    return shown + fragment


def _piece_redacted(piece: str) -> str:
    name, eq, _value = piece.partition("=")
    return f"{name}={HIDDEN}" if eq and secret_parameter(unquote(name)) else piece


def secrets_of(url: str) -> list[str]:
    """The secret parts of `url` (password, lone user name, secret query values), raw and decoded,
    longest first."""
    if "://" not in url:
        return []
    _scheme, userinfo, _body, query, _fragment = _split(url)
    found = []
    if userinfo is not None:
        user, colon, password = userinfo.partition(":")
        found.append(password if colon else user)
    found += [value for name, value, eq in _parameters(query or "") if eq and secret_parameter(unquote(name))]
    out: list[str] = []
    for secret in found:
        for form in (secret, unquote(secret)):
            if form and form not in out:
                out.append(form)
    return sorted(out, key=len, reverse=True)


def redact_text(text: str, url: str) -> str:
    """`text` (e.g. an FFmpeg error) with `url`'s secrets removed wherever they appear."""
    text = text.replace(url, redact(url))
    for secret in secrets_of(url):
        if len(secret) >= 3:  # shorter ones would mangle the text; they only leak inside the URL, replaced above
            text = text.replace(secret, HIDDEN)
    return text

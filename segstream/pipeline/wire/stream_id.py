"""The stream-id rule: 1-64 of A-Z a-z 0-9 . _ - (a stream's id is also its camera's and its file
job's id, and the tail of its Redis key `<prefix><stream-id>`).

One rule for every way in: `segstream run --stream-id`, the default id derived from a location,
`POST /streams` and the config's `streams:` (StreamSpec), `segstream submit` (fleet jobs) and
`segstream cameras add`, and the wire schema's records. Light (no pydantic): the Redis-only
commands import it.
"""

from __future__ import annotations

import re

#: For pydantic (Rust regex) and JSON Schema consumers in other languages, where `$` is the very
#: end of the text. Python's `re` reads `$` as "the end or just before a final newline", so
#: Python code matches with STREAM_ID (anchored with \Z) through check_stream_id/stream_id_problem.
ID_PATTERN = r"^[A-Za-z0-9._-]{1,64}$"
STREAM_ID = re.compile(ID_PATTERN[:-1] + r"\Z")
ID_RULE = "use 1-64 of A-Z a-z 0-9 . _ -"
_OUTSIDE = re.compile(r"[^A-Za-z0-9._-]+")
#: Characters of a refused id shown in its error (an id of 10 000 characters is not echoed back).
SHOWN = 70


def stream_id_problem(value: object, what: str = "stream id") -> str | None:
    """None when `value` follows the rule, else one line saying why: `stream id 'a/b': use 1-64 of ...`."""
    if isinstance(value, str) and STREAM_ID.match(value):
        return None
    if not isinstance(value, str):
        return f"{what} must be a string, not {type(value).__name__}"
    shown = repr(value[:SHOWN]) + ("…" if len(value) > SHOWN else "")
    length = f" ({len(value)} characters)" if len(value) > 64 else ""
    return f"{what} {shown}{length}: {ID_RULE}"


def check_stream_id(value: str, what: str = "stream id") -> str:
    """`value` when it follows the rule; ValueError with stream_id_problem's line otherwise."""
    problem = stream_id_problem(value, what)
    if problem is not None:
        raise ValueError(problem)
    return value


def stream_id_from(text: str, fallback: str = "stream") -> str:
    """An id that follows the rule made from any text (a file's stem, a URL's path): each run of
    other characters becomes "-", cut to 64 characters; `fallback` when nothing is left."""
    safe = _OUTSIDE.sub("-", text).strip("-")[:64].strip("-")
    return safe or fallback

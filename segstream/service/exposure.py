"""Who may reach a process that serves HTTP: where its token comes from and where it may listen.

Shared by every command that serves HTTP (`serve`, `run --http`, `worker --http`), so the rules are
the same everywhere (docs/security.md):

- the token comes from `$SEGSTREAM_TOKEN`, `--token-file FILE` (first line) or `--token` (kept for
  scripts, with a warning: the process list shows it); at least MIN_TOKEN_LENGTH characters;
- a non-loopback address is refused without a token, unless `--insecure-no-auth` says so
  explicitly (one warning line), like Redis's protected mode.

A refusal is a ConfigError: the command prints one `segstream: error:` line and exits 2.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import sys
from pathlib import Path
from typing import Mapping, TextIO

from segstream.pipeline.config import ConfigError

MIN_TOKEN_LENGTH = 16
TOKEN_ENV = "SEGSTREAM_TOKEN"
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})


def add_access_flags(parser: argparse.ArgumentParser) -> None:
    """--token, --token-file and --insecure-no-auth, with the same help everywhere."""
    parser.add_argument("--token-file", metavar="FILE",
                        help=f"read the access token from FILE's first line (or set ${TOKEN_ENV}); "
                        f"at least {MIN_TOKEN_LENGTH} characters")
    parser.add_argument("--token", help=f"the access token on the command line (shows in the process list: "
                        f"prefer ${TOKEN_ENV} or --token-file)")
    parser.add_argument("--insecure-no-auth", action="store_true",
                        help="allow listening on a non-loopback address without a token (anyone who can "
                        "reach the port can add and remove streams)")


def resolve_token(args: argparse.Namespace, environ: Mapping[str, str] | None = None,
                  warn: TextIO | None = None) -> str | None:
    """The token from --token, --token-file or $SEGSTREAM_TOKEN (in that order); None when none is
    given. Raises ConfigError for an unreadable file, two sources at once or a short token."""
    environ = os.environ if environ is None else environ
    warn = sys.stderr if warn is None else warn
    flag, path = getattr(args, "token", None), getattr(args, "token_file", None)
    if flag is not None and path is not None:
        raise ConfigError("--token and --token-file: give one of them")
    if path is not None:
        try:
            lines = Path(path).read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"--token-file: cannot read {path} ({getattr(exc, 'strerror', None) or type(exc).__name__})") from None
        token, origin = (lines[0].strip() if lines else ""), "--token-file"
    elif flag is not None:
        print("segstream: warning: --token shows the token in the process list; prefer "
              f"${TOKEN_ENV} or --token-file", file=warn, flush=True)
        token, origin = flag, "--token"
    elif environ.get(TOKEN_ENV):
        token, origin = environ[TOKEN_ENV], f"${TOKEN_ENV}"
    else:
        return None
    if len(token) < MIN_TOKEN_LENGTH:  # the token itself is never printed
        raise ConfigError(f"{origin}: the token is {len(token)} characters; it needs at least {MIN_TOKEN_LENGTH} characters "
                          "(e.g. python3 -c 'import secrets; print(secrets.token_urlsafe(32))')")
    return token


def is_loopback(host: str) -> bool:
    """True for localhost and loopback IP addresses (127.0.0.0/8, ::1); '' and 0.0.0.0 are not."""
    host = host.strip("[]").lower()
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_bind(host: str, token: str | None, insecure_no_auth: bool, flag: str = "--http",
               warn: TextIO | None = None) -> None:
    """Refuse a non-loopback `host` without a token unless `insecure_no_auth` (then warn once)."""
    if token is not None or is_loopback(host):
        return
    if not insecure_no_auth:
        raise ConfigError(f"{flag}: {host or '0.0.0.0'} is reachable from other machines and no token is set: "
                          f"set ${TOKEN_ENV} or --token-file, bind 127.0.0.1, or pass --insecure-no-auth")
    print(f"segstream: warning: --insecure-no-auth: {host or '0.0.0.0'} serves without a token; anyone who can "
          "reach it can use the API", file=sys.stderr if warn is None else warn, flush=True)

"""Failures inside the pipeline: one bad batch is skipped, a broken stage stops the run.

An engine or postprocess error on one batch is logged, counted and its frames are published
with an `error` field and no instances (nothing disappears silently). Only `limit` failures in
a row mean the stage itself is broken; then the run stops with one clear line.
"""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)


class StageFailed(RuntimeError):
    """A stage failed on too many batches in a row; the message is one line for the user."""


class ConsecutiveFailures:
    """Counts failures of one stage since its last success."""

    def __init__(self, stage: str, limit: int) -> None:
        self.stage = stage
        self.limit = limit
        self.in_a_row = 0
        self.total = 0

    def record(self, exc: BaseException) -> str:
        """Count one failure; returns its one-line description, raises StageFailed past the limit."""
        self.in_a_row += 1
        self.total += 1
        text = (str(exc).splitlines() or [""])[0] or type(exc).__name__
        reason = f"{self.stage} failed: {type(exc).__name__}: {text}"
        if self.in_a_row >= self.limit:
            raise StageFailed(f"{self.stage} failed on {self.in_a_row} batches in a row, stopping "
                              f"(last: {type(exc).__name__}: {text})") from None
        log.warning("%s (frames published without instances; %d in a row)", reason, self.in_a_row)
        return reason

    def succeeded(self) -> None:
        self.in_a_row = 0

"""What a driver posted, for the driver and engine tests (not a test module)."""

from __future__ import annotations

import time

from xendbg.messages import SnapshotReady
from xendbg.views.driver import Batch


def flat(messages: list) -> list:
    """``messages`` with each :class:`Batch` replaced by what it carries."""
    out = []
    for m in messages:
        out.extend(m.messages if isinstance(m, Batch) else (m,))
    return out


class MessageLog:
    """``messages``: what was posted, in order."""

    def __init__(self) -> None:
        self.messages: list = []

    def of(self, kind) -> list:
        """The messages of type ``kind`` posted so far, those inside a :class:`Batch` too."""
        return [m for m in flat(list(self.messages)) if isinstance(m, kind)]

    def stops(self) -> list[SnapshotReady]:
        return [m for m in self.of(SnapshotReady) if m.view.kind == "stop"]

    def wait(self, predicate, timeout: float = 60.0) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if predicate():
                return
            time.sleep(0.01)
        raise AssertionError("timed out waiting for the driver")

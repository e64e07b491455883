"""Failures the fuzzers have found in code their maintainers are changing, reported and not yet fixed.

A finding that matches an entry here is still counted and printed — as *known*, with the entry's
id — but does not fail a fuzz run or the tests, so that CI stays green while the owner works on the
fix. Each entry names the file, the symptom and the reproducer; delete the entry with the fix (a
fixed issue simply stops matching, and the summary shows it at zero).
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class KnownIssue:
    key: str
    where: str
    summary: str
    kind: str               # regex on the finding's kind
    text: str               # regex searched in the message and the traceback

    def matches(self, kind: str, message: str, detail: str) -> bool:
        return bool(re.search(self.kind, kind)) and \
            bool(re.search(self.text, f"{message}\n{detail}", re.S))


# Empty: the three findings of issue #9 (bounce32-kernel-ss, builder-allocation, count-tables-span)
# were fixed, with their regression tests in tests/test_regressions_fuzz.py.
KNOWN: tuple[KnownIssue, ...] = ()


def known_issue(kind: str, message: str, detail: str) -> str | None:
    """The key of the known issue this finding is, or None."""
    for issue in KNOWN:
        if issue.matches(kind, message, detail):
            return issue.key
    return None

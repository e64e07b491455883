"""``xendbg run --script FILE``: a session driven by a file of commands.

One command per line; blank lines and lines starting with ``#`` are skipped. Each command is echoed
as ``(xendbg) COMMAND`` and followed by its output; the guest's console goes to the same stream as
it is produced. The commands run in order, before and between stops: a run-control command
(``continue``, ``stepi``, ``step-hypercall`` …) returns when the guest stops. After the last command
the run ends. The first command that fails ends the script: its error is printed and the status is
:data:`EXIT_SCRIPT_ERROR`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from xendbg.debugger.session import Session

EXIT_SCRIPT_ERROR = 4


@dataclass
class ScriptOutcome:
    ok: bool
    failed_line: int | None = None
    error: str | None = None
    stopped_early: bool = False        # ``should_stop()`` said so (e.g. a --timeout)


def read_script(text: str) -> list[tuple[int, str]]:
    """(line number, command) for every command line of a script."""
    out = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if line and not line.startswith("#"):
            out.append((number, line))
    return out


def run_script(session: Session, lines: list[tuple[int, str]], write: Callable[[str], None],
               should_stop: Callable[[], bool] = lambda: False) -> ScriptOutcome:
    for number, line in lines:
        if should_stop():
            return ScriptOutcome(True, stopped_early=True)
        write(f"(xendbg) {line}\n")
        result = session.execute(line)
        if not result.ok:
            write(f"error: {result.text}\n")
            return ScriptOutcome(False, number, result.text)
        if result.text:
            write(result.text.rstrip("\n") + "\n")
    return ScriptOutcome(True)

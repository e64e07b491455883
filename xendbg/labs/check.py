"""Judge a lab guest: run it headless and read its ``CHECK <name>: ok|FAIL <why>`` lines."""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass, field

CHECK_LINE = re.compile(r"^CHECK (?P<name>[^:]+): (?:(?P<ok>ok)|FAIL (?P<why>.*))$")


@dataclass
class LabRun:
    guest: str
    checks: list[tuple[str, bool, str]] = field(default_factory=list)
    result: str | None = None          # "PASS" / "FAIL" from the guest's last line
    ended: str = ""                    # how the domain ended
    error: str | None = None           # could not run at all

    @property
    def passed(self) -> bool:
        return (self.error is None and self.result == "PASS" and bool(self.checks)
                and all(ok for _n, ok, _w in self.checks))


def parse(output: str, run: LabRun) -> None:
    for line in output.splitlines():
        line = line.rstrip("\r")
        m = CHECK_LINE.match(line)
        if m:
            run.checks.append((m["name"], bool(m["ok"]), m["why"] or ""))
        elif line in ("RESULT: PASS", "RESULT: FAIL"):
            run.result = line.split()[1]


def run_guest(name: str, timeout: float = 120.0) -> LabRun:
    from xendbg.runner import RunOptions, UsageError, load
    run = LabRun(name)
    try:
        machine, _image, _path = load(RunOptions(kernel=name))
    except UsageError as exc:
        run.error = str(exc)
        return run
    out = bytearray()
    machine.listeners.append(lambda e: out.extend(e.data["data"]) if e.kind == "console" else None)
    timer = threading.Timer(timeout, machine.pause)
    timer.daemon = True
    timer.start()
    try:
        reason = machine.run()
    finally:
        timer.cancel()
    d = machine.domain
    run.ended = (f"crashed: {d.crashed}" if d.crashed else
                 f"shut down ({d.shutdown.name})" if d.shutdown else reason)
    parse(out.decode("utf-8", "replace"), run)
    return run

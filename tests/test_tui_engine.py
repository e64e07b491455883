"""The emulator in its own process (xendbg.views.engine): messages across the pipe, the Driver's
interface from the UI's side, and what the UI is told when the child fails or is gone."""

from __future__ import annotations

import os
import socket
import threading
from pathlib import Path

import pytest
from tui_messages import MessageLog, flat

from xendbg.guests import lab_image
from xendbg.machine.machine import Event
from xendbg.messages import (
    CommandFinished,
    ConsoleOutput,
    GuestSpeed,
    HypercallsTraced,
    LoadFailed,
    MachineLoaded,
    RunStateChanged,
    SnapshotReady,
)
from xendbg.runner import RunOptions
from xendbg.views.driver import Batch
from xendbg.views.engine import EngineProcess, decode, encode


class EngineHarness(MessageLog):
    """An engine serving in a thread, as the screen's worker runs it; ``messages`` collects what
    it posts. Live views are acknowledged at once, as a screen that has drawn them."""

    def __init__(self, kernel: str, memory: int | None = 16) -> None:
        super().__init__()
        self.engine = EngineProcess(RunOptions(kernel=kernel, memory=memory), None, self._post)
        self.thread = threading.Thread(target=self.engine.serve, daemon=True)
        self.thread.start()

    def _post(self, message) -> None:
        self.messages.append(message)
        if any(isinstance(m, SnapshotReady) and m.view.live for m in flat([message])):
            self.engine.shown()

    def close(self) -> None:
        self.engine.close()
        self.thread.join(30)
        assert not self.thread.is_alive()


@pytest.fixture
def engine():
    made = []

    def make(kernel: str, **kw) -> EngineHarness:
        h = EngineHarness(kernel, **kw)
        made.append(h)
        return h

    yield make
    for h in made:
        h.close()
        assert not h.engine.internal_errors, h.engine.internal_errors[0]


def test_messages_cross_as_their_class_and_fields():
    events = (Event("hypercall", 7, {"nr": 18, "name": "console_io", "args": [0, 1, 2],
                                     "result": 0, "error": None}),)
    batch = Batch((ConsoleOutput("hello"), HypercallsTraced(events, 40, 2),
                   GuestSpeed(1.5, 1000), CommandFinished("break x", True, "Breakpoint 1")))
    back = decode(encode(batch))
    assert type(back) is Batch and [type(m) for m in back.messages] == \
        [ConsoleOutput, HypercallsTraced, GuestSpeed, CommandFinished]
    console, calls, speed, done = back.messages
    assert console.text == "hello" and (done.line, done.ok, done.text) == ("break x", True,
                                                                           "Breakpoint 1")
    assert calls.events == events and (calls.first_seq, calls.dropped) == (40, 2)
    assert calls.records[0].seq == 40 and calls.records[0].name == "console_io"
    assert speed.can_replace(GuestSpeed(2.0, 5))          # behaviour comes with the class
    assert console._sender is None and not console._stop_propagation    # Textual's, fresh


def test_hypercall_events_cross_as_columns_or_as_they_are():
    same = tuple(Event("hypercall", i, {"nr": 1, "name": "x", "args": [i], "result": -i})
                 for i in range(50))
    kind, *_ = encode(HypercallsTraced(same, 0))[1]["events"]
    assert kind == "columns"
    assert decode(encode(HypercallsTraced(same, 0))).events == same
    mixed = same[:3] + (Event("hypercall", 9, {"nr": 2, "name": "y", "args": []}),)
    assert encode(HypercallsTraced(mixed, 0))[1]["events"][0] == "events"
    assert decode(encode(HypercallsTraced(mixed, 0))).events == mixed
    assert decode(encode(HypercallsTraced((), 0))).events == ()


def test_engine_runs_the_guest_in_another_process(engine):
    h = engine(str(lab_image("hello-pv64")))
    h.wait(lambda: h.stops())
    assert h.of(MachineLoaded) and h.engine._process.pid != os.getpid()
    assert h.stops()[0].view.snap.insns == 0
    assert "print_str" in h.engine.symbols_matching("print_")       # asked of the child
    h.engine.submit("break print_str")
    h.engine.submit("continue")
    h.wait(lambda: len(h.stops()) >= 2)
    stopped = [m for m in h.of(RunStateChanged) if not m.running][0]
    assert stopped.reason == "breakpoint"
    view = h.stops()[-1].view
    assert view.session.label(view.snap.ip) == "print_str"
    h.engine.submit("delete 1")
    h.engine.submit("continue")
    h.wait(lambda: len(h.stops()) >= 3)
    assert "RESULT: PASS" in "".join(m.text for m in h.of(ConsoleOutput))
    records = [r for m in h.of(HypercallsTraced) for r in m.records]
    assert [r.seq for r in records] == list(range(len(records)))
    assert any(r.error == "-ENOSYS" for r in records)
    log = h.engine._log_path
    h.close()
    assert h.engine.exit_code == 0 and not log.exists()       # a clean end leaves no log


def test_engine_live_views_pause_and_console_input(engine):
    h = engine(str(lab_image("demo")), memory=64)
    h.wait(lambda: h.stops())
    h.engine.submit("continue")
    h.wait(lambda: h.engine.live_views >= 2)
    h.engine.console_input(b"ab")
    h.engine.pause()
    h.wait(lambda: len(h.stops()) >= 2)
    assert [m for m in h.of(RunStateChanged) if not m.running][0].reason == "pause"
    live = [m.view for m in h.of(SnapshotReady) if m.view.live]
    assert live and all(v.snap.insns > 0 for v in live)
    assert h.engine.emulator_cpu_seconds() > 0
    h.engine.submit("info console")
    h.wait(lambda: any(m.line == "info console" for m in h.of(CommandFinished)))
    said = [m for m in h.of(CommandFinished) if m.line == "info console"][0].text
    assert "2 bytes of input delivered, 0 queued" in said or \
        "0 bytes of input delivered, 2 queued" in said, said


def test_a_guest_that_cannot_load_is_one_line(engine):
    h = engine("/nonexistent/vmlinuz")
    h.wait(lambda: h.of(LoadFailed))
    (failed,) = h.of(LoadFailed)
    assert "/nonexistent/vmlinuz" in failed.reason and "\n" not in failed.reason
    assert h.engine.symbols_matching("x") == []       # the child answers: no symbols


def test_a_child_that_dies_is_reported_with_its_log(engine):
    h = engine(str(lab_image("demo")), memory=64)
    h.wait(lambda: h.stops())
    h.engine._process.kill()
    h.thread.join(30)
    crashed = [m for m in h.of(RunStateChanged) if m.reason == "crash"]
    assert crashed and "the emulator process ended unexpectedly" in crashed[0].text
    assert "exit code -9" in crashed[0].text
    log = h.engine._log_path
    assert str(log) in crashed[0].text and log.exists()
    log.unlink()
    assert h.engine.symbols_matching("demo") == []        # asked of nobody: no hang
    h.engine.submit("continue")                           # nothing to send to: no exception


def test_the_child_ends_when_the_ui_is_gone(engine):
    h = engine(str(lab_image("spin-pv64")))
    h.wait(lambda: h.stops())
    h.engine.submit("continue")
    h.wait(lambda: any(m.running for m in h.of(RunStateChanged)))
    # As if the UI process had died: its end of the socket shuts.
    socket.socket(fileno=os.dup(h.engine._conn.fileno())).shutdown(socket.SHUT_RDWR)
    h.thread.join(30)
    assert h.engine._process.wait(30) is not None
    Path(h.engine._log_path).unlink(missing_ok=True)


def test_requests_made_before_the_child_exists_wait_for_it():
    """The UI never blocks on the child's start: early requests are kept and sent in order."""
    log = MessageLog()
    engine = EngineProcess(RunOptions(kernel=str(lab_image("hello-pv64")), memory=16), None,
                           log.messages.append)
    engine.submit("break print_str")          # typed before the engine's process started
    engine.submit("continue")
    assert engine.symbols_matching("print_") == []        # nobody to ask yet: no wait
    thread = threading.Thread(target=engine.serve, daemon=True)
    thread.start()
    try:
        log.wait(lambda: [m for m in log.of(RunStateChanged) if not m.running])
        assert [m for m in log.of(RunStateChanged) if not m.running][0].reason == "breakpoint"
    finally:
        engine.close()
        thread.join(30)
    assert engine.exit_code == 0


def test_an_engine_closed_before_it_starts_starts_nothing():
    engine = EngineProcess(RunOptions(kernel="demo"), None, lambda m: None)
    engine.close()
    engine.serve()                            # returns at once
    assert engine._process is None and engine.submit("continue") is None

"""The TUI's machine side without Textual running: snapshots (``xendbg.machine.snapshot``), the
driver that runs the machine in its own thread and posts messages, and the layering rules."""

from __future__ import annotations

import ast
import threading
from pathlib import Path

import numpy as np
import pytest
from tui_messages import MessageLog

from xendbg.machine.snapshot import MachineSnapshot, snapshot
from xendbg.messages import (
    CommandFinished,
    ConsoleOutput,
    GuestSpeed,
    HypercallsTraced,
    MachineLoaded,
    RunStateChanged,
    SnapshotReady,
)
from xendbg.views.driver import Batch, Driver, Loaded

VIEWS = Path(__file__).resolve().parents[1] / "xendbg" / "views"


class Harness(MessageLog):
    """A driver serving in a thread; ``messages`` collects what it posts."""

    def __init__(self, machine, symbols) -> None:
        super().__init__()
        self.driver = Driver(lambda: Loaded(machine, symbols, "test"), self.messages.append)
        self.thread = threading.Thread(target=self.driver.serve, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.driver.close()
        self.thread.join(30)


@pytest.fixture
def harness(lab_machine):
    made = []

    def make(name: str, **kw) -> Harness:
        from xendbg.debugger import symbols_for_image
        m = lab_machine(name, **kw)
        h = Harness(m, symbols_for_image(m.image))
        made.append(h)
        h.wait(lambda: h.stops())
        return h

    yield make
    for h in made:
        h.close()
        assert not h.driver.internal_errors, h.driver.internal_errors[0]


# -- snapshots ---------------------------------------------------------------------------------------

def test_snapshot_of_a_stopped_guest(lab_machine):
    m = lab_machine("events-pv64")
    assert m.run(3000) == "budget"
    snap = snapshot(m, frames=True, walk_va=m.cpu.ip, memory_at=(m.cpu.sp, "va"),
                    frame_mfn=m.vcpu.guest_table)
    assert isinstance(snap, MachineSnapshot)
    assert snap.insns == m.insns and snap.ip == m.cpu.ip
    assert dict(snap.registers)["rip"] == m.cpu.ip
    # the current instruction is in the code window, with instructions before it
    addresses = [i.address for i in snap.code.insns]
    assert m.cpu.ip in addresses and addresses.index(m.cpu.ip) > 0
    assert snap.stack.sp == m.cpu.sp and snap.stack.words[0][1] is not None
    assert {p.port for p in snap.ports} == set(m.evtchn.ports)
    # the frame table is a copy that nobody can write
    ft = snap.frames
    assert len(ft.p2m) == m.domain.nr_pages and not ft.p2m.flags.writeable
    with pytest.raises(ValueError):
        ft.owner[0] = 1
    assert ft.page_type is not None, "the MMU keeps page types: the snapshot must show them"
    top = m.vcpu.guest_table
    assert ft.type_names[int(ft.page_type[top])] == "L4" and ft.pinned[top]
    # a walk of the ip lands on the machine address the guest reads its code from
    assert snap.walk.ma is not None and snap.walk.levels[0].name == "L4"
    assert snap.memory.data[:8] == tuple(m.guest.read(m.cpu.sp, 8))
    assert snap.frame.mfn == top and dict(snap.frame.info)["type"] == "L4"


def test_snapshot_is_a_copy(lab_machine):
    m = lab_machine("events-pv64")
    m.run(3000)
    snap = snapshot(m, frames=True)
    p2m = np.array(snap.frames.p2m)
    regs = snap.registers
    m.run(20000)
    assert np.array_equal(snap.frames.p2m, p2m) and snap.registers == regs
    assert snapshot(m).insns > snap.insns


def test_snapshot_at_the_entry_trampoline_and_unmapped_code(lab_machine):
    m = lab_machine("hello-pv64")
    snap = snapshot(m)              # before the first instruction: Xen's trampoline, ring 0
    assert snap.code.insns and snap.code.insns[0].address <= snap.ip
    m.cpu.ip = 0x1000               # nothing is mapped there
    snap = snapshot(m)
    assert snap.code.insns == () and "not mapped" in snap.code.error


# -- the driver -------------------------------------------------------------------------------------

def test_driver_publishes_the_first_stop_then_runs_commands(harness):
    h = harness("hello-pv64")
    assert h.of(MachineLoaded)
    first = h.stops()[0].view
    assert first.before is None and first.snap.insns == 0
    h.driver.submit("break print_str")
    h.driver.submit("continue")
    h.wait(lambda: any(not m.running for m in h.of(RunStateChanged)))
    stopped = [m for m in h.of(RunStateChanged) if not m.running][0]
    assert stopped.reason == "breakpoint"
    h.wait(lambda: len(h.stops()) >= 2)
    view = h.stops()[-1].view
    assert view.session.label(view.snap.ip) == "print_str"
    assert view.snap.ip in view.session.breakpoint_addresses
    assert view.before is first.snap or view.before.insns == 0     # highlights are vs the last stop
    done = h.of(CommandFinished)
    assert done[0].line == "break print_str" and done[0].ok


def test_driver_streams_console_and_hypercalls_and_reports_the_shutdown(harness):
    h = harness("hello-pv64")
    h.driver.submit("continue")
    h.wait(lambda: any(not m.running for m in h.of(RunStateChanged)))
    h.wait(lambda: len(h.stops()) >= 2)
    text = "".join(m.text for m in h.of(ConsoleOutput))
    assert "RESULT: PASS" in text
    records = [r for m in h.of(HypercallsTraced) for r in m.records]
    assert [r.seq for r in records] == list(range(len(records)))
    assert records and records[0].name == "console_io"
    assert any(r.error == "-ENOSYS" for r in records)        # hello-pv64 calls hypercall 63
    last = h.stops()[-1].view.snap
    assert last.domain_state == "shutdown" and "poweroff" in last.dying_reason
    h.driver.submit("continue")          # nothing can run: an error, and the driver goes on
    h.wait(lambda: len(h.of(CommandFinished)) >= 2)
    assert not h.of(CommandFinished)[-1].ok


def test_driver_live_snapshots_while_running_and_pause(harness):
    h = harness("demo")
    h.driver.submit("continue")
    h.wait(lambda: any(m.view.live for m in h.of(SnapshotReady)), timeout=60)
    live = [m.view for m in h.of(SnapshotReady) if m.view.live]
    first = h.stops()[0].view.snap
    assert live[0].snap.insns > 0 and live[0].before.insns == first.insns == 0
    assert live[0].before.registers == first.registers and live[0].snap.frames is None
    h.driver.pause()
    h.wait(lambda: any(not m.running for m in h.of(RunStateChanged)))
    stop = [m for m in h.of(RunStateChanged) if not m.running][0]
    assert stop.reason == "pause"


def test_driver_posts_a_live_refresh_and_a_stop_as_one_batch_each(harness):
    """Console text, hypercalls, speed and the view arrive together: the screen draws once."""
    h = harness("demo")
    h.driver.submit("continue")
    h.wait(lambda: any(m.view.live for m in h.of(SnapshotReady)), timeout=60)
    h.driver.pause()
    h.wait(lambda: len(h.stops()) >= 2)
    batches = [m for m in list(h.messages) if isinstance(m, Batch)]
    live = [b for b in batches if any(isinstance(m, SnapshotReady) and m.view.live
                                      for m in b.messages)]
    assert live and all(isinstance(b.messages[-1], SnapshotReady) for b in live)
    assert any(isinstance(m, GuestSpeed) for m in live[0].messages)
    stop = [b for b in batches if any(isinstance(m, SnapshotReady) and m.view.kind == "stop"
                                      for m in b.messages)][-1]
    kinds = [type(m) for m in stop.messages]
    assert RunStateChanged in kinds and CommandFinished in kinds


def test_driver_commands_and_console_input_while_running(harness):
    h = harness("demo")
    h.driver.submit("continue")
    h.wait(lambda: h.driver.running)
    h.driver.submit("break issue_multicall")       # safe while running: applied at a tick
    h.driver.submit("stepi")                        # runs the guest: waits for this run's end
    h.driver.console_input(b"x")
    h.wait(lambda: any(m.line == "break issue_multicall" for m in h.of(CommandFinished)))
    h.wait(lambda: any(not m.running for m in h.of(RunStateChanged)))
    first_stop = [m for m in h.of(RunStateChanged) if not m.running][0]
    assert first_stop.reason == "breakpoint"
    h.wait(lambda: any(m.line == "stepi" for m in h.of(CommandFinished)))
    assert bytes(h.driver.m.console.pending_input) == b"x" or h.driver.m.console.ring_bytes_in


def test_driver_run_for_is_repeatable(lab_machine):
    from xendbg.debugger import symbols_for_image

    def stop_after(n: int):
        m = lab_machine("demo")
        h = Harness(m, symbols_for_image(m.image))
        try:
            h.wait(lambda: h.stops())
            h.driver.run_for(n)
            h.wait(lambda: len(h.stops()) >= 2)
            return h.stops()[-1].view.snap
        finally:
            h.close()

    a, b = stop_after(60_000), stop_after(60_000)
    assert a.insns == b.insns and a.registers == b.registers
    assert [(p.port, p.sends, p.raised) for p in a.ports] == [(p.port, p.sends, p.raised)
                                                              for p in b.ports]


def test_a_bug_in_the_live_refresh_is_reported_not_a_domain_crash(harness, monkeypatch):
    h = harness("demo")
    monkeypatch.setattr(h.driver, "_publish", lambda kind: 1 / 0)
    h.driver.submit("continue")
    h.wait(lambda: any(not m.ok and "live refresh" in m.text for m in h.of(CommandFinished)))
    h.driver.pause()
    h.wait(lambda: any(not m.running for m in h.of(RunStateChanged)), timeout=60)
    assert h.driver.m.domain.crashed is None
    assert "ZeroDivisionError" in h.driver.internal_errors[0]
    h.driver.internal_errors.clear()          # seen: the fixture's check is for the other tests


def test_driver_reports_a_load_failure():
    messages = []

    def load():
        raise ValueError("no such guest")
    d = Driver(load, messages.append)
    d.serve()
    assert type(messages[0]).__name__ == "LoadFailed" and "no such guest" in messages[0].reason


def test_driver_address_requests(harness):
    h = harness("hello-pv64")
    h.driver.show_address("walk", "rip")
    h.driver.show_address("memory", "ma:0x1000")
    h.driver.show_address("walk", "no_such_symbol")
    refreshes = lambda: [m.view for m in h.of(SnapshotReady) if m.view.kind == "refresh"]  # noqa: E731
    h.wait(lambda: len(refreshes()) >= 2)
    snap = refreshes()[-1].snap
    assert snap.walk.va == snap.ip and snap.memory.space == "ma" and snap.memory.address == 0x1000
    h.wait(lambda: any(not m.ok for m in h.of(CommandFinished)))
    assert "no_such_symbol" in [m for m in h.of(CommandFinished) if not m.ok][0].text


# -- layering -----------------------------------------------------------------------------------------

def test_only_the_driver_touches_the_machine_and_the_session():
    """Panels render views; the screen talks to the driver; only the driver holds the machine
    (engine.py runs a driver in a process of its own; it rebuilds the machine's events)."""
    offenders = []
    for path in VIEWS.rglob("*.py"):
        if path.name in ("driver.py", "engine.py"):
            continue
        tree = ast.parse(path.read_text())
        for node in list(ast.walk(tree)):
            if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
                node.body = []                      # imports for annotations only
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module in (
                    "xendbg.machine.machine", "xendbg.debugger.session", "xendbg.runner"):
                offenders.append(f"{path.name}: imports {node.module}")
            if isinstance(node, ast.Attribute) and node.attr in ("m", "machine") and \
                    isinstance(node.value, ast.Attribute) and node.value.attr == "driver":
                offenders.append(f"{path.name}:{node.lineno}: driver.{node.attr}")
    assert not offenders


def test_snapshot_module_is_read_only_and_not_imported_by_the_machine():
    machine_dir = VIEWS.parent / "machine"
    for path in machine_dir.rglob("*.py"):
        if path.name == "snapshot.py":
            continue
        assert "snapshot import" not in path.read_text() and \
            "machine.snapshot" not in path.read_text(), path


def test_stops_carry_the_frame_table_only_while_a_frame_panel_wants_it(harness):
    """The driver keeps each stop's frame table (the next stop's highlights need it); the screen
    gets both tables — this stop's and the last's — once it asks for frames."""
    h = harness("hello-pv64")
    h.driver.run_for(20_000)
    h.wait(lambda: len(h.stops()) >= 2)
    stop = h.stops()[-1].view
    assert stop.snap.frames is None and stop.before.frames is None
    h.driver.set_view(frames=True)
    h.wait(lambda: any(m.view.kind == "refresh" for m in h.of(SnapshotReady)))
    shown = [m.view for m in h.of(SnapshotReady) if m.view.kind == "refresh"][-1]
    assert shown.snap.frames is not None and shown.before.frames is not None
    assert shown.before.insns == 0 and shown.snap.insns == stop.snap.insns

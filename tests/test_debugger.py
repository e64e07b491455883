"""The debugger session on lab guests, through its API (``Session.execute``): run control,
breakpoints of every kind, stepping, hypercall entry/exit, watchpoints, pause from another thread."""

from __future__ import annotations

import ast
import struct
import threading
import time
from pathlib import Path

import pytest

from xendbg.debugger import Session, symbols_for_image
from xendbg.debugger.commands import COMMANDS
from xendbg.machine.abi import xen as X
from xendbg.machine.domain import Callback

DEBUGGER = Path(__file__).resolve().parents[1] / "xendbg" / "debugger"


@pytest.fixture
def session(lab_machine):
    def make(name: str) -> Session:
        m = lab_machine(name)
        return Session(m, symbols_for_image(m.image))
    return make


def ok(s: Session, line: str):
    r = s.execute(line)
    assert r.ok, f"{line}: {r.text}"
    return r


def test_code_breakpoint_stops_before_the_instruction_and_resumes(session):
    s = session("hello-pv64")
    target = s.symbols.resolve("step2_magic").address
    ok(s, "break step2_magic")
    r = ok(s, "continue")
    assert r.stop.reason == "breakpoint" and r.stop.breakpoints == [1]
    assert s.m.cpu.ip == target
    assert "CHECK magic" not in bytes(s.m.console.output).decode()   # not yet executed
    r = ok(s, "continue")                  # steps over the breakpoint it is stopped at
    assert r.stop.reason == "shutdown"
    assert bytes(s.m.console.output).decode().rstrip().endswith("RESULT: PASS")
    assert s.breakpoints.get(1).hits == 1


def test_stepi_executes_exactly_one_instruction_each(session):
    """Each step goes to the next instruction (straight-line code) or the branch target, also
    where a free run has cached translated blocks; stepi N equals N single steps."""
    one, many = session("spin-pv64"), session("spin-pv64")
    for s in (one, many):
        ok(s, "break spin_step")
        ok(s, "continue")
        ok(s, "delete")
    before = one.m.insns
    for _ in range(12):
        ip = one.m.cpu.ip
        insn = one.insn_at(ip)
        ok(one, "stepi")
        if insn.mnemonic not in ("call", "ret", "jmp"):
            assert one.m.cpu.ip == ip + insn.size, insn
        elif insn.mnemonic == "call":
            assert one.m.cpu.ip == int(insn.op_str, 16)
    assert one.m.insns == before + 12
    r = ok(many, "stepi 12")
    assert r.stop.reason == "step"
    assert many.m.cpu.ip == one.m.cpu.ip and many.m.insns == one.m.insns
    assert r.text.startswith(many.fmt(many.m.cpu.ip))


@pytest.mark.parametrize("guest", ["hello-pv64", "hello-pv32"])
def test_stopping_at_every_hypercall_entry_changes_nothing(session, lab_machine, guest):
    """Each call is deferred (the guest left on its trap instruction) and made on resume: the
    console output, the hypercall counts and virtual time equal those of a plain run."""
    plain = lab_machine(guest)
    plain.run()
    s = session(guest)
    ok(s, "break hypercall any")
    stops = 0
    while True:
        r = ok(s, "continue")
        if r.stop.reason != "hypercall-entry":
            break
        stops += 1
    assert r.stop.reason == "shutdown"
    assert stops == sum(plain.stats.calls.values()) == sum(s.m.stats.calls.values())
    assert bytes(s.m.console.output) == bytes(plain.console.output)
    assert s.m.insns == plain.insns


def test_hypercall_entry_is_before_the_call_and_finish_makes_it(session):
    s = session("hello-pv64")
    r = ok(s, "step-hypercall")
    assert r.stop.reason == "hypercall-entry"
    assert s.m.guest.read(s.m.cpu.ip, 2) == b"\x0f\x05"      # on the syscall, not past it
    calls = sum(s.m.stats.calls.values())
    assert calls == 0
    assert "console_io(cmd=0x0" in r.text and "CONSOLEIO_write" in r.text
    assert "hello-pv64: magic=" in r.text                     # the buffer it points to
    r = ok(s, "finish-hypercall")
    assert r.stop.reason == "hypercall-exit"
    assert "console_io returned 0" in r.text
    assert sum(s.m.stats.calls.values()) == 1
    assert s.execute("finish-hypercall").ok is False           # no longer at an entry


def test_break_hypercall_if_error_is_decided_after_the_call(session):
    s = session("hello-pv64")
    ok(s, "break hypercall console_io if error")
    r = ok(s, "continue")
    assert r.stop.reason == "breakpoint"
    assert "-EFAULT" in r.text                                 # the guest's deliberate bad buffer
    assert s.m.stats.errors["console_io"] == 1


def test_break_hypercall_condition_on_arguments_and_ignore_count(session):
    s = session("hello-pv64")
    ok(s, "break hypercall xen_version if cmd == 0")
    ok(s, "ignore 1 1")
    r = ok(s, "continue")
    assert r.stop.reason == "hypercall-entry"
    assert s.m.stats.calls["xen_version"] == 1                 # the first was ignored
    assert s.breakpoints.get(1).hits == 2


def test_event_channel_send_is_decoded_and_its_effect_shown(session):
    s = session("hello-pv64")
    ok(s, "break hypercall event_channel_op")
    r = ok(s, "continue")
    assert "EVTCHNOP_send {port=2}" in r.text
    r = ok(s, "finish-hypercall")
    assert "event_channel_op returned 0" in r.text
    assert "port 2: sends 0 → 1" in r.text or "port 2" in r.text
    r = ok(s, "info evtchn")
    assert "[console]" in r.text


def test_break_trap_stops_in_the_guest_handler(session):
    s = session("hello-pv64")
    ok(s, "break trap #BP")
    r = ok(s, "continue")
    assert r.stop.reason == "breakpoint"
    assert "#BP" in r.text
    assert s.m.cpu.ip == s.symbols.resolve("trap_int3").address
    r = ok(s, "info traps")
    assert "trap_int3" in r.text


def test_break_event_stops_at_the_upcall(session):
    """An upcall made by Xen (a callback registered and events unmasked by hand, then the console
    port raised) stops ``break event``; info vcpu shows the pending port and the mask."""
    s = session("hello-pv64")
    m = s.m
    ok(s, "break step3_hypercall_page")
    ok(s, "continue")
    handler = s.symbols.resolve("trap_int3").address
    m.vcpu.callbacks[X.CALLBACKTYPE_event] = Callback(handler)
    m.traps.set_upcall_mask(m.vcpu, 0)
    m.evtchn.raise_port(2)
    ok(s, "break event 2")
    r = ok(s, "continue")
    assert r.stop.reason == "breakpoint", r.text
    assert "pending ports [2]" in r.text
    assert m.cpu.ip == handler
    r = ok(s, "info vcpu")
    assert "evtchn_upcall_mask 1" in r.text and "pending ports: [2]" in r.text


def test_break_console_regex(session):
    s = session("hello-pv64")
    ok(s, "break console CHECK (console|int)[a-z_]*: ok")
    r = ok(s, "continue")
    assert r.stop.reason == "breakpoint"
    assert "'CHECK console_io: ok'" in r.text


def test_break_crash(session):
    s = session("hello-pv64")
    ok(s, "break main")
    ok(s, "break crash")
    ok(s, "continue")
    s.m.cpu.ip = 0x1000                           # not mapped: a #PF the guest has no handler for
    r = ok(s, "continue")
    assert r.stop.reason == "crash"
    assert "Breakpoint 2 (crash)" in r.text
    assert s.execute("continue").ok is False      # nothing can run any more


def test_break_page_and_frame_history_from_mmu_events(session):
    """Page breakpoints follow the MMU's ``page_type`` events (simulated here, as the MMU emits
    them, from inside a hypercall)."""
    s = session("hello-pv64")
    m = s.m
    mfn = m.vcpu.guest_table

    def mmu(event):
        if event.kind == "hypercall" and event.data["name"] == "xen_version":
            m.emit("page_type", mfn=mfn, type="l4", pinned=True)

    m.listeners.insert(0, mmu)
    ok(s, f"break page {mfn:#x}")
    r = ok(s, "continue")
    assert r.stop.reason == "breakpoint" and "page_type" in r.text
    assert any("type=l4, pinned=True" in text for _n, _k, text in s.frame_history[mfn])
    r = ok(s, f"info frame {mfn:#x}")
    assert "vCPU's current top-level table" in r.text
    assert "history:" in r.text


def test_watchpoints_on_a_spinning_guest(session):
    s = session("spin-pv64")
    ok(s, "watch spin_last")
    r = ok(s, "continue")
    assert r.stop.reason == "watchpoint"
    assert "write of 8 bytes" in r.text and "spin_leaf" in r.text
    assert r.stop.data["watch"]["ip"] == s.symbols.resolve("spin_leaf").address + 0xF
    ok(s, "disable 1")
    ok(s, "rwatch ma:" + hex(s.m.guest.translate(s.symbols.resolve("spin_count").address)))
    r = ok(s, "continue")
    assert r.stop.reason == "watchpoint" and "read of 8 bytes" in r.text


def test_next_finish_and_backtrace(session):
    s = session("spin-pv64")
    ok(s, "break spin_leaf")
    ok(s, "continue")
    r = ok(s, "backtrace")
    assert "spin_step+0x9" in r.text and "spin_loop" in r.text
    ok(s, "delete")
    r = ok(s, "finish")
    assert r.stop.reason == "finish"
    assert s.m.cpu.ip == s.symbols.resolve("spin_step").address + 9
    ok(s, "break spin_step")
    ok(s, "continue")
    ok(s, "stepi 2")                                 # push rbp; mov rbp, rsp → at the call
    assert s.insn_at(s.m.cpu.ip).mnemonic == "call"
    sp = s.m.cpu.sp
    r = ok(s, "next")
    assert r.stop.reason == "next" and s.m.cpu.sp == sp


def test_pause_from_another_thread_while_the_guest_spins(session):
    s = session("spin-pv64")
    results = []
    worker = threading.Thread(target=lambda: results.append(s.execute("continue")))
    worker.start()
    deadline = time.monotonic() + 60
    while s.m.insns < 100_000 and time.monotonic() < deadline:   # running freely
        time.sleep(0.01)
    s.pause()
    worker.join(60)
    assert not worker.is_alive()
    r = results[0]
    assert r.ok and r.stop.reason == "pause"
    count = s.m.guest.read_u64(s.symbols.resolve("spin_count").address)
    assert count > 1000
    r = ok(s, "stepi")                                # the session is usable after the pause
    assert r.stop.reason == "step"


def test_errors_are_results_not_exceptions(session):
    s = session("hello-pv64")
    for line in ("frobnicate", "break no_such_symbol", "x/4zx main", "break hypercall nope",
                 "info nothing", "finish-hypercall", "condition 7 rax == 1", "break main if (",
                 "break main if __import__('os')", "watch 0x10", "info frame 0xffffffffff",
                 "stepi 0", "walk"):
        r = s.execute(line)
        assert r.ok is False, line
        assert r.text
    assert not s.internal_errors


def test_help_covers_every_command(session):
    s = session("hello-pv64")
    text = ok(s, "help").text
    for cmd in COMMANDS:
        assert cmd.name in text
        detail = ok(s, f"help {cmd.name}").text
        assert detail.startswith(f"usage: {cmd.usage}")
    assert "vcpu" in ok(s, "help info").text
    assert "pending" in ok(s, "help info vcpu").text


def test_info_timers(session):
    s = session("hello-pv64")
    r = ok(s, "info timers")
    assert "virtual TSC" in r.text and "next deadline" in r.text
    assert "vcpu0.periodic" in r.data and "calibration" in r.data
    assert "vcpu0.singleshot: stopped" in r.text


def test_info_views_show_the_mmu_and_the_grant_table(session):
    s = session("hello-pv64")
    top = s.m.vcpu.guest_table
    text = ok(s, f"info frame {top:#x}").text
    assert "page type: L4 pinned" in text and "start of day" in text
    text = ok(s, "info grant").text
    assert text.startswith("grant table v1") and "no entry in use" in text


def test_inspection_commands(session):
    s = session("hello-pv64")
    ok(s, "break step2_magic")
    ok(s, "continue")
    assert "<step2_magic>" in ok(s, "info registers").text
    dis = ok(s, "disassemble").text
    assert "=> 0x" in dis and "<str_prefix>" in dis
    assert "'xen-3.0-x86_64'" in ok(s, "x/s str_magic_want").text
    r = ok(s, "x/2gx ma:0x0")
    assert r.data["size"] == 8
    r = ok(s, "walk $rip")
    assert "L4" in r.text and "L1" in r.text and r.data["ma"] == s.m.guest.translate(s.m.cpu.ip)
    assert "pfn 0x1 → mfn" in ok(s, "info p2m 1").text
    assert "/local/domain/1" in ok(s, "info xenstore").text
    ok(s, "xenstore-write /local/domain/1/data/test hello")
    assert "'hello'" in ok(s, "info xenstore /local/domain/1/data").text
    assert "sel 0xe033" in ok(s, "info gdt").text
    assert "magic=" in ok(s, "info console").text
    assert "start_info" in ok(s, "info layout").text
    assert ok(s, "print main+4").data["value"] == s.symbols.resolve("main").address + 4
    assert "step2_magic" in ok(s, "history").text


def test_hello_pv32_step_hypercall_decodes_int82_calls(session):
    s = session("hello-pv32")
    r = ok(s, "step-hypercall")
    assert r.stop.reason == "hypercall-entry"
    assert s.m.guest.read(s.m.cpu.ip, 2) == b"\xcd\x82"
    r = ok(s, "finish-hypercall")
    assert "returned 0" in r.text
    r = ok(s, "continue")
    assert r.stop.reason == "shutdown"
    assert bytes(s.m.console.output).decode().rstrip().endswith("RESULT: PASS")


def test_decoders_read_the_guest_lists(lab_machine, scratch_va):
    """mmuext_op, mmu_update, multicall and evtchn structs, decoded from guest memory."""
    from xendbg.debugger.decode import describe_call
    m = lab_machine("hello-pv64")
    va = scratch_va(m)
    mfn = m.vcpu.guest_table
    assert m.guest.write(va, struct.pack("<I4xQQ", X.MMUEXT_PIN_L4_TABLE, mfn, 0))
    d = describe_call(m, "mmuext_op", {"op": va, "count": 1, "done": 0, "foreigndom": 0x7FF0})
    assert d.data["ops"][0] == {"cmd": "PIN_L4_TABLE", "arg1": mfn, "arg2": 0, "mfn": mfn}
    assert f"PIN_L4_TABLE mfn {mfn:#x}" in d.text()
    assert m.guest.write(va + 64, struct.pack("<QQ", (mfn << 12) + 8 * 3, (mfn << 12) | 0x67))
    d = describe_call(m, "mmu_update", {"req": va + 64, "count": 1, "done": 0, "foreigndom": 0})
    assert d.data["requests"][0]["index"] == 3 and "NORMAL_PT_UPDATE" in d.text()
    entry = struct.pack("<8Q", X.HYPERVISOR_mmuext_op, 0, va, 1, 0, 0x7FF0, 0, 0)
    entry += struct.pack("<8Q", X.HYPERVISOR_event_channel_op, 0, X.EVTCHNOP_send, va + 200, 0, 0,
                         0, 0)
    assert m.guest.write(va + 256, entry) and m.guest.write(va + 200, struct.pack("<I", 2))
    d = describe_call(m, "multicall", {"call_list": va + 256, "nr_calls": 2})
    assert [e["name"] for e in d.data["entries"]] == ["mmuext_op", "event_channel_op"]
    assert "PIN_L4_TABLE" in d.text() and "EVTCHNOP_send {port=2}" in d.text()
    d = describe_call(m, "mmuext_op", {"op": 0x10, "count": 1, "done": 0, "foreigndom": 0})
    assert "unreadable" in d.text()


def test_debugger_never_imports_a_ui_library():
    for path in DEBUGGER.glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for name in names:
                assert name.split(".")[0] not in ("textual", "rich"), f"{path.name} imports {name}"


def test_multicall_is_decoded_at_entry_and_each_entry_reported_after(session, scratch_va):
    """The guest's xen_version call is turned into a multicall of two entries (registers set at
    its syscall); step-hypercall shows the entries decoded, finish-hypercall each one's result,
    and a breakpoint on an entry's hypercall stops after the batch, saying which entry."""
    from unicorn import x86_const as U
    s = session("hello-pv64")
    m = s.m
    page = m.domain.hypercall_page_va
    syscall = page + X.HYPERVISOR_xen_version * 32 + 8       # after push rcx; push r11; mov eax
    ok(s, f"break {syscall:#x}")
    ok(s, "continue")
    va = scratch_va(m)
    text = b"hi\n"
    assert m.guest.write(va + 512, text)
    batch = struct.pack("<8Q", X.HYPERVISOR_xen_version, 0, 0, 0, 0, 0, 0, 0)
    batch += struct.pack("<8Q", X.HYPERVISOR_console_io, 0, 0, len(text), va + 512, 0, 0, 0)
    assert m.guest.write(va, batch)
    for reg, value in ((U.UC_X86_REG_RAX, X.HYPERVISOR_multicall), (U.UC_X86_REG_RDI, va),
                       (U.UC_X86_REG_RSI, 2)):
        m.cpu.uc.reg_write(reg, value)
    ok(s, "break hypercall console_io")
    r = ok(s, "step-hypercall")
    assert r.stop.reason == "hypercall-entry"
    assert "multicall(call_list=" in r.text
    assert "[0] xen_version(cmd=0x0, arg=0x0)" in r.text
    assert "CONSOLEIO_write 3 bytes: 'hi\\n'" in r.text
    r = ok(s, "finish-hypercall")
    assert "multicall returned 0" in r.text
    assert r.stop.reason == "breakpoint" and "entry 1 of a multicall batch" in r.text
    assert "multicall entry 0: xen_version → 0x" in r.text
    assert "multicall entry 1: console_io → 0" in r.text
    assert "[1] console_io" in ok(s, "info multicall").text


@pytest.mark.parametrize("guest", ["hello-pv64", "hello-pv32"])
def test_single_stepping_a_whole_guest_equals_running_it(session, lab_machine, guest):
    """stepi from the first instruction to the shutdown, stopping at every hypercall entry on the
    way: same console output and same instruction count (virtual time) as a plain run."""
    plain = lab_machine(guest)
    plain.run()
    s = session(guest)
    ok(s, "break hypercall any")
    entries = 0
    for _ in range(20_000):
        r = ok(s, "stepi")
        if r.stop.reason in ("shutdown", "crash"):
            break
        entries += r.stop.reason == "hypercall-entry"
    assert r.stop.reason == "shutdown"
    assert entries == sum(plain.stats.calls.values())
    assert bytes(s.m.console.output) == bytes(plain.console.output)
    assert s.m.insns == plain.insns

"""The block counter: the compiled hook and its Python twin count and stop identically."""

from __future__ import annotations

import importlib
import os

import pytest

from xendbg.fast import _blockhook_py
from xendbg.fast import blockhook as selector


def _impls():
    impls = [pytest.param(_blockhook_py.BlockCounter, id="python")]
    try:
        from xendbg.fast import _blockhook_c
        impls.append(pytest.param(_blockhook_c.BlockCounter, id="cython"))
    except ImportError:
        impls.append(pytest.param(None, id="cython", marks=pytest.mark.skip("not built")))
    return impls


def test_compiled_module_loaded_where_a_compiler_exists():
    import shutil
    if os.environ.get("XENDBG_PURE_PYTHON") or shutil.which("cc") is None:
        pytest.skip("pure-Python run or no compiler")
    assert selector.IMPLEMENTATION == "cython"
    importlib.import_module("xendbg.fast._blockhook_c")


def _run_guest(counter_cls, lab_machine, name, budget=None):
    m = lab_machine(name)
    m.counter.remove()
    m.counter = counter_cls(m.cpu.uc, m._icount_of)
    m.counter.install()
    events = []
    m.listeners.append(lambda e: events.append((e.kind, e.insns)))
    reason = m.run(budget)
    return m, reason, events


@pytest.mark.parametrize("impl", _impls())
@pytest.mark.parametrize("name", ["hello-pv64", "hello-pv32"])
def test_counts_and_trace_agree_with_the_twin(impl, name, lab_machine):
    m_py, r_py, ev_py = _run_guest(_blockhook_py.BlockCounter, lab_machine, name)
    m_x, r_x, ev_x = _run_guest(impl, lab_machine, name)
    assert r_py == r_x == "shutdown"
    assert m_py.insns == m_x.insns > 1000
    assert ev_py == ev_x


@pytest.mark.parametrize("impl", _impls())
def test_budget_stops_at_the_same_place(impl, lab_machine):
    m_py, r_py, _ = _run_guest(_blockhook_py.BlockCounter, lab_machine, "hello-pv64", 3000)
    m_x, r_x, _ = _run_guest(impl, lab_machine, "hello-pv64", 3000)
    assert r_py == r_x == "budget"
    assert m_py.insns == m_x.insns >= 3000
    assert m_py.cpu.ip == m_x.cpu.ip
    # and the run can continue to the end from there
    assert m_x.run() == "shutdown"


@pytest.mark.parametrize("impl", _impls())
def test_request_stop_from_another_thread(impl, lab_machine):
    import threading
    m = lab_machine("hello-pv64")
    m.counter.remove()
    m.counter = impl(m.cpu.uc, m._icount_of)
    m.counter.install()
    m.counter.request_stop()          # already requested: stops at the first block
    assert m.run() == "pause"
    insns = m.insns
    t = threading.Thread(target=m.pause)      # a request made between runs is not lost
    t.start()
    t.join()
    assert m.run() == "pause"
    assert m.insns - insns < 100
    assert m.run() == "shutdown"              # a request is consumed by the stop it causes


# -- the counter on bare Unicorn: exact counts, the stop rule, a table larger than its caches --------

BASE = 0x100000


def _bare(code: bytes, impl):
    import capstone
    from unicorn import UC_ARCH_X86, UC_MODE_64, Uc

    uc = Uc(UC_ARCH_X86, UC_MODE_64)
    uc.mem_map(BASE, 0x800000)
    uc.mem_write(BASE, code)
    md = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)

    def icount_of(address: int, size: int) -> int:
        return len(list(md.disasm_lite(bytes(uc.mem_read(address, size)), address)))

    counter = impl(uc, icount_of)
    counter.install()
    return uc, counter


def _loop(iterations: int, body_insns: int) -> bytes:
    """mov r9, N; loop: inc rbx × body_insns; dec r9; jnz loop; hlt"""
    import struct
    body = b"\x48\xff\xc3" * body_insns
    return (b"\x49\xb9" + struct.pack("<Q", iterations) + body + b"\x49\xff\xc9"
            + b"\x0f\x85" + struct.pack("<i", -(len(body) + 9)) + b"\xf4")


@pytest.mark.parametrize("impl", _impls())
@pytest.mark.parametrize("budget", [1, 5, 10, 11, 12, 100, 999])
def test_a_stop_does_not_count_the_block_it_did_not_run(impl, budget):
    from unicorn import x86_const as U
    n, per = 200, 8                                   # a loop block: 8 + dec + jnz = 10 insns
    code = _loop(n, per)
    end = BASE + len(code) - 1                        # the hlt: not executed
    uc, counter = _bare(code, impl)
    counter.budget = budget
    uc.emu_start(BASE, end)
    assert counter.stop_reason == _blockhook_py.STOP_BUDGET
    done = n - uc.reg_read(U.UC_X86_REG_R9)
    assert counter.insns == 1 + (per + 2) * done == uc.reg_read(U.UC_X86_REG_RBX) // per * 10 + 1
    # the first block boundary at or after the budget, never before it, never a block later
    assert budget <= counter.insns < budget + per + 2 + 1
    assert uc.reg_read(U.UC_X86_REG_RIP) == BASE + 10          # at the loop's head, not inside
    # the rest of the run counts the rest: in total, what one run counts
    counter.budget = 0
    counter.stop_reason = 0
    uc.emu_start(uc.reg_read(U.UC_X86_REG_RIP), end)
    assert counter.insns == 1 + (per + 2) * n


@pytest.mark.parametrize("impl", _impls())
def test_a_request_stops_before_the_first_block_without_counting_it(impl):
    from unicorn import x86_const as U
    code = _loop(10, 4)
    uc, counter = _bare(code, impl)
    counter.request_stop()
    uc.emu_start(BASE, BASE + len(code) - 1)
    assert counter.stop_reason == _blockhook_py.STOP_REQUEST
    assert counter.insns == 0 and uc.reg_read(U.UC_X86_REG_RIP) == BASE


@pytest.mark.parametrize("impl", _impls())
def test_many_blocks_evicting_each_other(impl):
    """40 000 distinct blocks of 1 to 4 instructions, run twice: beyond the compiled counter's
    front cache and its table's first size, so it evicts, probes and grows; the count stays exact
    and equal to the twin's."""
    import struct
    blocks, expected, code = 40_000, 0, bytearray()
    for i in range(blocks):
        incs = 1 + i % 4
        code += b"\x48\xff\xc3" * incs + b"\xe9" + struct.pack("<i", 0)    # inc rbx…; jmp next
        expected += incs + 1
    # then: dec r9; jnz BASE; hlt — the whole chain runs twice (r9 = 2)
    code += b"\x49\xff\xc9" + b"\x0f\x85" + struct.pack("<i", -(len(code) + 9)) + b"\xf4"
    from unicorn import x86_const as U
    uc, counter = _bare(bytes(code), impl)
    uc.reg_write(U.UC_X86_REG_R9, 2)
    uc.emu_start(BASE, BASE + len(code) - 1)
    assert uc.reg_read(U.UC_X86_REG_RBX) == 2 * (expected - blocks)
    assert counter.insns == 2 * (expected + 2)
    assert counter.cached_blocks() == blocks + 1
    assert counter.blocks == 2 * (blocks + 1)

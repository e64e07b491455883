"""Regression tests for bugs the fuzzers found (``xendbg/fuzz``), one per bug, smallest input first."""

from __future__ import annotations

import pytest


@pytest.mark.parametrize("guest", ["hello-pv64", "hello-pv32"])
def test_first_fault_of_a_run_slice_is_not_a_double_fault(lab_machine, scratch_va, guest):
    """Unicorn drops the translation at ``until - 1`` when a run slice ends; from a ring-3 pv64
    kernel that address (in Xen's area) faults, and the swallowed #PF left ``old_exception`` set,
    so the guest's next #GP arrived as a #DF. ``Cpu.start`` now clears it before each slice."""
    m = lab_machine(guest)
    assert m.run(max_insns=50) == "budget"          # one slice ended in guest mode
    va = scratch_va(m)
    assert m.guest.write(va, b"\xfa\xeb\xfe")       # cli (no I/O privilege: #GP); jmp .
    m.cpu.ip = va
    assert m.run(max_insns=1000) == "crash"
    assert "unhandled #GP" in m.domain.crashed, m.domain.crashed

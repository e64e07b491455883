"""The failsafe callback: an ``iret`` hypercall whose CS/SS (or RIP) the exit ``iret`` would fault on.

Xen restores the frame into its saved guest state; its real ``iret`` then faults and Xen enters the
guest's failsafe callback with Xen's ``create_bounce_frame(TBF_FAILSAFE)`` frame:
``RCX, R11, DS, ES, FS, GS, RIP, CS, RFLAGS, RSP, SS`` (64-bit) or
``DS, ES, FS, GS, EIP, CS, EFLAGS, [ESP, SS]`` (32-bit). Each test runs the lab guest to its first
hypercall (so the CPU holds guest state), then makes the iret hypercall with a prepared frame.
"""

from __future__ import annotations

import struct

import pytest
from unicorn import x86_const as U

from xendbg.machine.abi import xen as X

RFLAGS_IF = 1 << 9
VGCF_IN_SYSCALL = X.VGCF_in_syscall


@pytest.fixture
def pv64(lab_machine, scratch_va, enter_guest):
    m = lab_machine("hello-pv64")
    enter_guest(m)
    return m, scratch_va(m)


@pytest.fixture
def pv32(lab_machine, scratch_va, enter_guest):
    m = lab_machine("hello-pv32")
    enter_guest(m)
    return m, scratch_va(m)


def iret64(m, va, *, rax=0x1111, r11=0x2222, rcx=0x3333, flags=0, rip=None, cs=0xE030,
           rflags=RFLAGS_IF | 2, rsp=None, ss=0xE02B):
    rip = va + 0x900 if rip is None else rip
    rsp = va + 0xC00 if rsp is None else rsp
    m.guest.write(va, struct.pack("<9Q", rax, r11, rcx, flags, rip, cs, rflags, rsp, ss))
    m.cpu.uc.reg_write(U.UC_X86_REG_RSP, va)
    m.hypercall(X.HYPERVISOR_iret, [], m.cpu.ip)
    assert not m.internal_errors, m.internal_errors


def failsafe_events(m):
    events = []
    m.listeners.append(lambda e: events.append(e) if e.kind == "failsafe" else None)
    return events


def test_pv64_null_cs_enters_the_failsafe_callback(pv64):
    m, va = pv64
    handler = va + 0x400
    m.hypercall(X.HYPERVISOR_set_callbacks, [0, handler, 0], 0)
    events = failsafe_events(m)
    uc = m.cpu.uc
    segs = [uc.reg_read(r) & 0xFFFF for r in (U.UC_X86_REG_DS, U.UC_X86_REG_ES,
                                                U.UC_X86_REG_FS, U.UC_X86_REG_GS)]
    iret64(m, va, cs=0, rflags=RFLAGS_IF | 2 | 1 << 12)
    assert m.domain.crashed is None
    assert m.cpu.ip == handler
    sp = uc.reg_read(U.UC_X86_REG_RSP)
    assert sp == va + 0xC00 - 11 * 8, "on the stack the guest was returning to (kernel mode)"
    frame = struct.unpack("<11Q", m.guest.read(sp, 88))
    assert frame[:2] == (0x3333, 0x2222), "RCX and R11 as the iret restored them"
    assert list(frame[2:6]) == segs, "the data selectors Xen found loaded"
    assert frame[6] == va + 0x900, "the RIP Xen failed to return to"
    assert frame[7] == 0, "its CS (null; RPL cleared for a kernel-mode frame), saved mask 0"
    assert m.vcpu.kernel_mode
    assert frame[8] & RFLAGS_IF and not frame[8] & (3 << 12), "IF from the mask, IOPL cleared"
    assert frame[9:] == (va + 0xC00, 0xE02B)
    assert uc.reg_read(U.UC_X86_REG_RAX) == 0x1111
    assert (uc.reg_read(U.UC_X86_REG_CS), uc.reg_read(U.UC_X86_REG_SS)) == (0xE033, 0xE02B)
    assert m.traps.upcall_mask(m.vcpu) == 0, "the callback was not registered to mask events"
    assert len(events) == 1 and "null code selector" in events[0].data["reason"]


# Kernel-mode returns (frame CS with RPL 0, as the guest's bounce frames have); Xen forces RPL 3.
@pytest.mark.parametrize("cs,ss,rip,why", [
    (0xE030, 0, None, "null stack selector"),
    (0xE028, 0xE02B, None, "not a code segment"),
    (0xE030, 0xE030, None, "not a writable data segment"),
    (0xE008, 0xE02B, None, "has DPL 0, not 3"),            # Xen's own ring-0 code segment
    (0xFFF8, 0xE02B, None, "beyond the descriptor table"),
    (0x0040, 0xE02B, None, "not a code segment"),           # an empty slot of the guest's GDT
    (0xE030, 0xE02B, 0x0000800000000000, "not canonical"),
])
def test_pv64_bad_returns(pv64, cs, ss, rip, why):
    m, va = pv64
    m.hypercall(X.HYPERVISOR_set_callbacks, [0, va + 0x400, 0], 0)
    events = failsafe_events(m)
    iret64(m, va, cs=cs, ss=ss, rip=rip)
    assert m.domain.crashed is None and m.cpu.ip == va + 0x400
    assert len(events) == 1 and why in events[0].data["reason"]


def test_pv64_mask_events_flag_masks_on_entry(pv64):
    m, va = pv64
    m.guest.write(va + 0xE00, struct.pack("<HHIQ", X.CALLBACKTYPE_failsafe,
                                          X.CALLBACKF_mask_events, 0, va + 0x400))
    m.hypercall(X.HYPERVISOR_callback_op, [X.CALLBACKOP_register, va + 0xE00], 0)
    iret64(m, va, ss=0)
    assert m.cpu.ip == va + 0x400 and m.traps.upcall_mask(m.vcpu) == 1
    frame = struct.unpack("<11Q", m.guest.read(m.cpu.uc.reg_read(U.UC_X86_REG_RSP), 88))
    assert frame[7] >> 32 == 0, "the saved mask is the one before entry"


def test_pv64_bad_return_to_user_mode_uses_the_kernel_stack(pv64):
    """A frame for user mode switches to user mode; the failsafe bounce switches back."""
    m, va = pv64
    m.vcpu.guest_table_user = m.vcpu.guest_table    # a user page table, for the switch
    m.hypercall(X.HYPERVISOR_set_callbacks, [0, va + 0x400, 0], 0)
    iret64(m, va, cs=3, ss=0xE02B)
    assert m.domain.crashed is None and m.cpu.ip == va + 0x400 and m.vcpu.kernel_mode
    sp = m.cpu.uc.reg_read(U.UC_X86_REG_RSP)
    assert sp == (m.vcpu.kernel_sp & ~0xF) - 88
    frame = struct.unpack("<11Q", m.guest.read(sp, 88))
    assert frame[7] & 0xFFFF == 3, "a user-mode frame keeps its RPL"


def test_pv64_in_syscall_returns_with_sysret(pv64):
    """With VGCF_in_syscall Xen leaves by sysret: the frame's selectors do not matter."""
    m, va = pv64
    m.hypercall(X.HYPERVISOR_set_callbacks, [0, va + 0x400, 0], 0)
    iret64(m, va, flags=VGCF_IN_SYSCALL, cs=0, ss=0)
    uc = m.cpu.uc
    assert m.domain.crashed is None and m.cpu.ip == va + 0x900
    assert uc.reg_read(U.UC_X86_REG_RCX) == va + 0x900, "sysret took RIP from RCX"
    assert uc.reg_read(U.UC_X86_REG_R11) & RFLAGS_IF


def test_pv64_without_a_failsafe_callback_the_domain_crashes(pv64):
    m, va = pv64
    iret64(m, va, cs=0)
    assert m.domain.crashed and "no failsafe callback" in m.domain.crashed


def test_pv64_compat_user_mode_is_still_unimplemented(pv64):
    m, va = pv64
    m.vcpu.guest_table_user = m.vcpu.guest_table
    m.hypercall(X.HYPERVISOR_set_callbacks, [0, va + 0x400, 0], 0)
    iret64(m, va, cs=0xE023, ss=0xE02B)
    assert m.domain.crashed and "compat user mode is not implemented" in m.domain.crashed


def test_pv64_failsafe_handler_runs(pv64):
    """End to end: the CPU runs the handler, which powers the domain off."""
    m, va = pv64
    handler = va + 0x400
    code = bytes.fromhex("b806000000" "bf02000000" "be00000000" "0f05")   # sched_op_compat
    m.guest.write(handler, code)
    m.hypercall(X.HYPERVISOR_set_callbacks, [0, handler, 0], 0)
    iret64(m, va, cs=0)
    assert m.run(max_insns=1000) == "shutdown"
    assert m.domain.shutdown.name == "poweroff"


def iret32(m, va, *, eax=0x1111, eip=None, cs=0xE019, eflags=RFLAGS_IF | 2, esp=None, ss=None):
    eip = va + 0x900 if eip is None else eip
    words = [eax, eip, cs, eflags]
    if ss is not None:
        words += [va + 0xC00 if esp is None else esp, ss]
    m.guest.write(va, struct.pack(f"<{len(words)}I", *words))
    m.cpu.uc.reg_write(U.UC_X86_REG_ESP, va)
    m.hypercall(X.HYPERVISOR_iret, [], m.cpu.ip)
    assert not m.internal_errors, m.internal_errors


def test_pv32_ring1_data_selector_as_cs(pv32):
    m, va = pv32
    handler = va + 0x400
    m.hypercall(X.HYPERVISOR_set_callbacks, [0xE019, 0, 0xE019, handler], 0)
    uc = m.cpu.uc
    segs = [uc.reg_read(r) & 0xFFFF for r in (U.UC_X86_REG_DS, U.UC_X86_REG_ES,
                                                U.UC_X86_REG_FS, U.UC_X86_REG_GS)]
    iret32(m, va, cs=0xE021)
    assert m.domain.crashed is None and m.cpu.ip == handler
    sp = uc.reg_read(U.UC_X86_REG_ESP)
    assert sp == va + 16 - 7 * 4, "ring 1: on the stack above the popped iret frame"
    frame = struct.unpack("<7I", m.guest.read(sp, 28))
    assert list(frame[:4]) == segs
    assert frame[4:6] == (va + 0x900, 0xE021)
    assert frame[6] & RFLAGS_IF
    assert uc.reg_read(U.UC_X86_REG_EAX) == 0x1111
    assert uc.reg_read(U.UC_X86_REG_CS) == 0xE019


def test_pv32_ring3_bad_stack_goes_on_the_kernel_stack(pv32):
    m, va = pv32
    m.hypercall(X.HYPERVISOR_set_callbacks, [0xE019, 0, 0xE019, va + 0x400], 0)
    events = failsafe_events(m)
    iret32(m, va, cs=0xE02B, ss=0x0003, esp=0x1234)
    assert m.domain.crashed is None and m.cpu.ip == va + 0x400
    sp = m.cpu.uc.reg_read(U.UC_X86_REG_ESP)
    assert sp == m.vcpu.kernel_sp - 9 * 4
    frame = struct.unpack("<9I", m.guest.read(sp, 36))
    assert frame[4:6] == (va + 0x900, 0xE02B) and frame[7:] == (0x1234, 0x0003)
    assert "null stack selector" in events[0].data["reason"]


def test_pv32_iret_to_ring0_crashes(pv32):
    m, va = pv32
    m.hypercall(X.HYPERVISOR_set_callbacks, [0xE019, 0, 0xE019, va + 0x400], 0)
    iret32(m, va, cs=0xE018)
    assert m.domain.crashed and "ring 0" in m.domain.crashed


def test_pv32_valid_user_return_is_still_unimplemented(pv32):
    m, va = pv32
    m.hypercall(X.HYPERVISOR_set_callbacks, [0xE019, 0, 0xE019, va + 0x400], 0)
    iret32(m, va, cs=0xE02B, ss=0xE033)
    assert m.domain.crashed and "ring 3 is not implemented" in m.domain.crashed


def test_pv32_null_failsafe_selector_crashes(pv32):
    m, va = pv32
    m.hypercall(X.HYPERVISOR_set_callbacks, [0xE019, 0, 0, va + 0x400], 0)
    iret32(m, va, cs=0xE021)
    assert m.domain.crashed and "null code selector" in m.domain.crashed


def test_pv32_failsafe_handler_runs(pv32):
    m, va = pv32
    handler = va + 0x400
    code = bytes.fromhex("b806000000" "bb02000000" "b900000000" "cd82")   # sched_op_compat
    m.guest.write(handler, code)
    m.hypercall(X.HYPERVISOR_set_callbacks, [0xE019, 0, 0xE019, handler], 0)
    iret32(m, va, cs=0xE021)
    assert m.run(max_insns=1000) == "shutdown"

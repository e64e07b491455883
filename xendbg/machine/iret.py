"""The ``iret`` hypercall (Xen's ``pv/iret.c``): how a PV guest returns from a bounce frame.

64-bit: the frame at RSP is ``struct iret_context {rax, r11, rcx, flags, rip, cs, rflags, rsp, ss}``
(Xen's hypercall stub pushed rcx, r11 and rax on top of the guest's frame). Xen restores RAX,
RIP, RFLAGS, RSP, CS and SS, and R11/RCX unless ``flags & VGCF_in_syscall``; a CS with RPL 3 means
"return to user mode", which switches to the user page tables. Selectors get RPL 3 back; RFLAGS gets
IF set and IOPL cleared; the event mask becomes the inverse of the frame's IF.

32-bit: the frame at ESP is EAX, EIP, CS, EFLAGS and, when returning to ring 3, ESP and SS.

A frame that cannot be read crashes the domain, as in Xen.
"""

from __future__ import annotations

import struct

from unicorn import x86_const as U

from xendbg.machine.abi import xen as X
from xendbg.machine.traps import RFLAGS_IF, RFLAGS_IOPL, RFLAGS_VM

NO_RESULT = object()       # the handler has set every register itself


def do_iret(m) -> object:
    if m.abi.bits == 64:
        return _iret64(m)
    return _iret32(m)


def _iret64(m) -> object:
    uc = m.cpu.uc
    vcpu = m.vcpu
    rsp = uc.reg_read(U.UC_X86_REG_RSP)
    raw = m.guest.read(rsp, 72)
    if raw is None:
        m.crash(f"iret: cannot read the iret frame at {rsp:#x}")
        return NO_RESULT
    rax, r11, rcx, flags, rip, cs, rflags, new_rsp, ss = struct.unpack("<9Q", raw)
    if cs & 3 == 3:
        if vcpu.guest_table_user == 0:
            m.crash("iret to user mode, but the guest has no user page table (NEW_USER_BASEPTR)")
            return NO_RESULT
        if vcpu.kernel_mode:
            m.toggle_guest_mode(vcpu)
    cs |= 3
    ss |= 3
    if (cs & 0xFFFF) != m.abi.kernel_cs or (ss & 0xFFFF) != m.abi.kernel_ss:
        m.crash(f"iret to CS:SS {cs & 0xFFFF:#x}:{ss & 0xFFFF:#x}: xendbg runs 64-bit PV guests "
                "on the flat selectors only (compat user mode is not implemented)")
        return NO_RESULT
    if not flags & X.VGCF_in_syscall:
        uc.reg_write(U.UC_X86_REG_R11, r11)
        uc.reg_write(U.UC_X86_REG_RCX, rcx)
    uc.reg_write(U.UC_X86_REG_RAX, rax)
    uc.reg_write(U.UC_X86_REG_RFLAGS, (rflags & ~(RFLAGS_IOPL | RFLAGS_VM)) | RFLAGS_IF)
    uc.reg_write(U.UC_X86_REG_RSP, new_rsp)
    m.traps.set_upcall_mask(vcpu, 0 if rflags & RFLAGS_IF else 1)
    m.set_guest_ip(rip)
    return NO_RESULT


def _iret32(m) -> object:
    uc = m.cpu.uc
    vcpu = m.vcpu
    esp = uc.reg_read(U.UC_X86_REG_ESP)
    raw = m.guest.read(esp, 16)
    if raw is None:
        m.crash(f"iret: cannot read the iret frame at {esp:#x}")
        return NO_RESULT
    eax, eip, cs, eflags = struct.unpack("<4I", raw)
    if eflags & RFLAGS_VM:
        m.crash("iret to virtual-8086 mode is not supported for PV guests")
        return NO_RESULT
    ring = cs & 3
    if ring == 0:
        cs |= 1                            # Xen never returns a PV guest to ring 0
        ring = 1
    if ring != 1 or (cs & 0xFFFF) != m.abi.kernel_cs:
        m.crash(f"iret to CS {cs & 0xFFFF:#x}: xendbg returns 32-bit guests to the ring-1 kernel "
                "selector only (ring 3 is not implemented)")
        return NO_RESULT
    uc.reg_write(U.UC_X86_REG_EAX, eax)
    uc.reg_write(U.UC_X86_REG_EFLAGS, (eflags & ~RFLAGS_IOPL) | RFLAGS_IF)
    uc.reg_write(U.UC_X86_REG_ESP, (esp + 16) & 0xFFFFFFFF)
    m.traps.set_upcall_mask(vcpu, 0 if eflags & RFLAGS_IF else 1)
    m.set_guest_ip(eip)
    return NO_RESULT

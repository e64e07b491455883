"""The ``iret`` hypercall (Xen's ``pv/iret.c``): how a PV guest returns from a bounce frame.

64-bit: the frame at RSP is ``struct iret_context {rax, r11, rcx, flags, rip, cs, rflags, rsp, ss}``
(Xen's hypercall stub pushed rcx, r11 and rax on top of the guest's frame). Xen restores RAX,
RIP, RFLAGS, RSP, CS and SS, and R11/RCX unless ``flags & VGCF_in_syscall``; a CS with RPL 3 means
"return to user mode", which switches to the user page tables. Selectors get RPL 3 back; RFLAGS gets
IF set and IOPL cleared; the event mask becomes the inverse of the frame's IF. With
``VGCF_in_syscall`` Xen leaves through ``sysret`` (when RIP is canonical), which loads the flat
user selectors whatever the frame says and leaves RIP in RCX and RFLAGS in R11.

32-bit: the frame at ESP is EAX, EIP, CS, EFLAGS and, when returning to ring 2 or 3, ESP and SS.
A return to ring 0 crashes the domain; one to virtual-8086 mode is not supported by xendbg.

Xen restores these values into its saved guest state and then returns with a real ``iret``. If the
code or stack selector would not load there (null, not a code/data segment of the right privilege,
not present, beyond the GDT), or RIP is not canonical, that ``iret`` faults and Xen enters the
guest's failsafe callback instead, with the rejected state in the frame. xendbg checks the
descriptors the way the CPU would and does the same. A frame that cannot be read crashes the
domain, as in Xen.
"""

from __future__ import annotations

import struct

from unicorn import x86_const as U

from xendbg.machine.abi import xen as X
from xendbg.machine.memory import PAGE_SHIFT
from xendbg.machine.traps import RFLAGS_IF, RFLAGS_IOPL, RFLAGS_VM, GuestFrame
from xendbg.machine.xenarea import FIRST_RESERVED_GDT_ENTRY, GDT_LIMIT

NO_RESULT = object()       # the handler has set every register itself

_P = 1 << 47               # descriptor bits, counted in the 64-bit value
_S = 1 << 44
_CODE = 1 << 43
_CONFORMING_OR_EXPAND_DOWN = 1 << 42
_WRITABLE = 1 << 41
_L = 1 << 53
_D = 1 << 54
_DPL_SHIFT = 45


def _descriptor(m, selector: int) -> int | None:
    """The descriptor ``selector`` names in the vCPU's GDT or LDT, or None if it has none.

    GDT entries are read from the frames behind the per-vCPU GDT (the guest's ``set_gdt`` frames,
    zeroes after them, Xen's reserved page), not through the guest's page tables, which may be the
    user ones at this point.
    """
    index = selector >> 3
    vcpu = m.vcpu
    if selector & 4:
        if index >= vcpu.ldt_entries:
            return None
        raw = m.guest.read(vcpu.ldt_base + index * 8, 8)
        return None if raw is None else struct.unpack("<Q", raw)[0]
    if index * 8 + 7 > GDT_LIMIT:
        return None
    if index >= FIRST_RESERVED_GDT_ENTRY:
        mfn, slot = m.xen_area.gdt_reserved_mfn, index - FIRST_RESERVED_GDT_ENTRY
    elif index < len(vcpu.gdt_frames) * 512:
        mfn, slot = vcpu.gdt_frames[index // 512], index % 512
    else:
        return 0                           # the zero page after the guest's frames
    return m.memory.read_u64((mfn << PAGE_SHIFT) + slot * 8)


def selector_fault(m, cs: int, ss: int | None, ip: int) -> str | None:
    """Why a hardware ``iret`` to CS:IP (and SS, unless None) would fault; None if it would not.

    The protected-mode checks of IRET to an outer privilege level (Intel SDM, IRET): the new CPL is
    CS.RPL; CS must name a present code segment of that privilege; SS must have the same RPL and
    name a present writable data segment of that privilege (a null SS is allowed only in 64-bit
    mode below ring 3, which PV guests never return to); a 64-bit RIP must be canonical.
    """
    rpl = cs & 3
    if cs & ~3 == 0:
        return f"null code selector {cs:#x}"
    desc = _descriptor(m, cs)
    if desc is None:
        return f"code selector {cs:#x} is beyond the descriptor table"
    dpl = (desc >> _DPL_SHIFT) & 3
    if not desc & _S or not desc & _CODE:
        return f"selector {cs:#x} is not a code segment"
    if (dpl > rpl) if desc & _CONFORMING_OR_EXPAND_DOWN else (dpl != rpl):
        return f"code selector {cs:#x} has DPL {dpl}, not {rpl}"
    if not desc & _P:
        return f"code segment {cs:#x} is not present"
    if desc & _L and desc & _D:
        return f"code segment {cs:#x} has both L and D set"
    if desc & _L and not (ip < 1 << 47 or ip >= 0xFFFF800000000000):
        return f"RIP {ip:#x} is not canonical"
    if ss is None:
        return None
    if ss & ~3 and ss & 3 != rpl:
        return f"stack selector {ss:#x} has RPL {ss & 3}, code selector RPL {rpl}"
    return stack_selector_fault(m, ss, rpl)


def stack_selector_fault(m, ss: int, cpl: int) -> str | None:
    """Why loading ``ss`` into SS at privilege ``cpl`` would fault; None if it would not.

    The SS checks of a protected-mode segment load (Intel SDM, MOV/POP SS and IRET): not null, RPL
    and DPL equal to the new CPL, a present writable data segment.
    """
    if ss & ~3 == 0:
        return f"null stack selector {ss:#x}"
    if ss & 3 != cpl:
        return f"stack selector {ss:#x} has RPL {ss & 3}, not {cpl}"
    desc = _descriptor(m, ss)
    if desc is None:
        return f"stack selector {ss:#x} is beyond the descriptor table"
    if not desc & _S or desc & _CODE or not desc & _WRITABLE:
        return f"selector {ss:#x} is not a writable data segment"
    if (desc >> _DPL_SHIFT) & 3 != cpl:
        return f"stack selector {ss:#x} has DPL {(desc >> _DPL_SHIFT) & 3}, not {cpl}"
    if not desc & _P:
        return f"stack segment {ss:#x} is not present"
    return None


def _enter_failsafe(m, frame: GuestFrame, why: str, at: int) -> object:
    m.emit("failsafe", ip=at, cs=frame.cs & 0xFFFF, ss=frame.ss & 0xFFFF, target_ip=frame.ip,
           reason=why)
    m.traps.failsafe(m.vcpu, frame)
    return NO_RESULT


def do_iret(m) -> object:
    if m.abi.bits == 64:
        return _iret64(m)
    return _iret32(m)


def _iret64(m) -> object:
    read, write = m.cpu.read_plain, m.cpu.write_plain
    vcpu = m.vcpu
    at = read(U.UC_X86_REG_RIP)
    rsp = read(U.UC_X86_REG_RSP)
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
    if m.domain.vm_assist & (1 << X.VMASST_TYPE_architectural_iopl):
        vcpu.iopl = (rflags & RFLAGS_IOPL) >> 12
    cs = (cs | 3) & 0xFFFF
    ss = (ss | 3) & 0xFFFF
    new_flags = (rflags & ~(RFLAGS_IOPL | RFLAGS_VM)) | RFLAGS_IF
    canonical = rip < 1 << 47 or rip >= 0xFFFF800000000000
    sysret = bool(flags & X.VGCF_in_syscall) and canonical
    if sysret:
        # sysret loads the flat selectors and takes RIP and RFLAGS from RCX and R11.
        rcx, r11 = rip, new_flags
        if cs != m.abi.user_cs32:
            cs, ss = m.abi.user_cs, m.abi.user_ss
    elif flags & X.VGCF_in_syscall:
        rcx, r11 = read(U.UC_X86_REG_RCX), read(U.UC_X86_REG_R11)
    write(U.UC_X86_REG_RAX, rax)
    write(U.UC_X86_REG_R11, r11)
    write(U.UC_X86_REG_RCX, rcx)
    m.traps.set_upcall_mask(vcpu, 0 if rflags & RFLAGS_IF else 1)
    why = None if sysret else selector_fault(m, cs, ss, rip)
    if why is not None:
        return _enter_failsafe(m, GuestFrame(rip, cs, new_flags, new_rsp, ss, rcx, r11), why, at)
    if cs != m.abi.kernel_cs or ss != m.abi.kernel_ss:
        # A guest's own 64-bit code segment (Linux's __USER_CS 0x33) is, to the CPU, the same flat
        # ring-3 long-mode segment as Xen's: in 64-bit mode only the selector value changes. A
        # compat (32-bit) segment would need a real far transfer, which xendbg does not make.
        desc = _descriptor(m, cs)
        if desc is None or not desc & _L:
            m.crash(f"iret to CS:SS {cs:#x}:{ss:#x}: a 32-bit (compat) user code segment; "
                    "compat user mode is not implemented in xendbg")
            return NO_RESULT
        write(U.UC_X86_REG_CS, cs)
        write(U.UC_X86_REG_SS, ss)
    write(U.UC_X86_REG_RFLAGS, new_flags)
    write(U.UC_X86_REG_RSP, new_rsp)
    m.set_guest_ip(rip)
    return NO_RESULT


def _iret32(m) -> object:
    read, write = m.cpu.read_plain, m.cpu.write_plain
    vcpu = m.vcpu
    at = read(U.UC_X86_REG_EIP)
    esp = read(U.UC_X86_REG_ESP)
    raw = m.guest.read(esp, 16)
    if raw is None:
        m.crash(f"iret: cannot read the iret frame at {esp:#x}")
        return NO_RESULT
    eax, eip, cs, eflags = struct.unpack("<4I", raw)
    cs &= 0xFFFF                           # the bits above hold the saved upcall mask
    if m.domain.vm_assist & (1 << X.VMASST_TYPE_architectural_iopl):
        vcpu.iopl = (eflags & RFLAGS_IOPL) >> 12
    new_flags = (eflags & ~RFLAGS_IOPL) | RFLAGS_IF
    if eflags & RFLAGS_VM:
        m.crash("iret to virtual-8086 mode: Xen would inject #GP there; xendbg does not "
                "implement that")
        return NO_RESULT
    ring = cs & 3
    if ring == 0:
        m.crash(f"iret to ring 0 (CS {cs:#x}): Xen crashes a PV guest that asks for it")
        return NO_RESULT
    if ring == 1:
        ss = read(U.UC_X86_REG_SS) & 0xFFFF
        new_esp = (esp + 16) & 0xFFFFFFFF
        checked_ss = None                  # ring 1 keeps the current stack segment
    else:
        tail = m.guest.read(esp + 16, 8)
        if tail is None:
            m.crash(f"iret: cannot read ESP and SS of the iret frame at {esp + 16:#x}")
            return NO_RESULT
        new_esp, ss = struct.unpack("<II", tail)
        ss &= 0xFFFF
        checked_ss = ss
    write(U.UC_X86_REG_EAX, eax)
    m.traps.set_upcall_mask(vcpu, 0 if eflags & RFLAGS_IF else 1)
    why = selector_fault(m, cs, checked_ss, eip)
    if why is not None:
        return _enter_failsafe(m, GuestFrame(eip, cs, new_flags, new_esp, ss), why, at)
    if cs != m.abi.kernel_cs:
        m.crash(f"iret to CS {cs:#x}: xendbg returns 32-bit guests to the ring-1 kernel "
                "selector only (ring 3 is not implemented)")
        return NO_RESULT
    write(U.UC_X86_REG_EFLAGS, new_flags)
    write(U.UC_X86_REG_ESP, new_esp)
    m.set_guest_ip(eip)
    return NO_RESULT

"""Bouncing exceptions, upcalls and failsafe callbacks into the guest (Xen's ``create_bounce_frame``).

A PV guest never sees a hardware IDT. Xen receives every trap and, if the guest registered a handler
for it (``set_trap_table``) or a callback (``set_callbacks``/``callback_op``), builds a frame on the
guest kernel stack and enters the handler:

64-bit (lowest address first; 16-byte aligned)::

    RCX, R11, [error code], RIP, CS | saved_upcall_mask << 32, RFLAGS, RSP, SS

  If the guest was in kernel mode the frame goes on the current stack and the saved CS has its RPL
  bits cleared (``0xe030``) — that is how the guest tells kernel from user frames. From user mode,
  Xen first switches to the kernel's page tables and to the stack given to ``stack_switch``.

32-bit (ring 1)::

    [error code], EIP, CS | saved_upcall_mask << 16, EFLAGS, [ESP, SS]

  ESP and SS are pushed only when the trap came from ring 3.

RFLAGS.IF in the frame is the inverse of the saved upcall mask (the guest's "interrupts enabled").
Entering with ``TBF_INTERRUPT`` (an event upcall, or a trap_info entry with the "clear event mask"
flag) masks events. A trap that cannot be delivered — no handler, or a fault while writing the
frame — crashes the domain with the reason, as Xen does.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from unicorn import x86_const as U

from xendbg.machine.abi import xen as X
from xendbg.machine.abi.layout import Abi
from xendbg.machine.domain import Vcpu

EXCEPTION_NAMES = {0: "#DE", 1: "#DB", 2: "NMI", 3: "#BP", 4: "#OF", 5: "#BR", 6: "#UD", 7: "#NM",
                   8: "#DF", 9: "coprocessor overrun", 10: "#TS", 11: "#NP", 12: "#SS", 13: "#GP",
                   14: "#PF", 16: "#MF", 17: "#AC", 18: "#MC", 19: "#XM", 20: "#VE", 21: "#CP"}
ERROR_CODE_VECTORS = frozenset({8, 10, 11, 12, 13, 14, 17, 21})

RFLAGS_TF, RFLAGS_IF, RFLAGS_IOPL, RFLAGS_NT = 1 << 8, 1 << 9, 3 << 12, 1 << 14
RFLAGS_RF, RFLAGS_VM, RFLAGS_AC = 1 << 16, 1 << 17, 1 << 18
RFLAGS_CLEARED_ON_TRAP = RFLAGS_TF | RFLAGS_VM | RFLAGS_RF | RFLAGS_NT | RFLAGS_AC


def vector_name(vector: int) -> str:
    return EXCEPTION_NAMES.get(vector, f"vector {vector:#x}")


@dataclass
class Bounce:
    """What was delivered, for the debugger's event stream."""

    kind: str             # "exception", "interrupt", "upcall", "failsafe"
    vector: int | None
    target: int
    error_code: int | None
    frame_sp: int
    from_user: bool


class TrapBouncer:
    """Builds bounce frames for one domain; ``machine`` supplies registers and guest memory."""

    def __init__(self, machine) -> None:
        self.m = machine
        self.abi: Abi = machine.abi

    def upcall_mask(self, vcpu: Vcpu) -> int:
        return self.m.memory.view[vcpu.vcpu_info_ma + 1]

    def set_upcall_mask(self, vcpu: Vcpu, value: int) -> None:
        self.m.memory.view[vcpu.vcpu_info_ma + 1] = 1 if value else 0

    def bounce(self, vcpu: Vcpu, target: int, *, kind: str, vector: int | None = None,
               error_code: int | None = None, interrupt: bool = False,
               target_cs: int = 0) -> Bounce | None:
        """Enter the guest at ``target`` with a bounce frame; None if the domain was crashed."""
        if target == 0:
            what = vector_name(vector) if vector is not None else kind
            self.m.crash(f"no guest handler for {what} (trap table / callback not registered)")
            return None
        if self.abi.bits == 64:
            return self._bounce64(vcpu, target, kind, vector, error_code, interrupt)
        return self._bounce32(vcpu, target, target_cs, kind, vector, error_code, interrupt)

    def _bounce64(self, vcpu: Vcpu, target: int, kind: str, vector: int | None,
                  error_code: int | None, interrupt: bool) -> Bounce | None:
        m = self.m
        uc = m.cpu.uc
        rip, rsp, rflags, rcx, r11, cs, ss = (
            uc.reg_read(U.UC_X86_REG_RIP), uc.reg_read(U.UC_X86_REG_RSP),
            uc.reg_read(U.UC_X86_REG_RFLAGS), uc.reg_read(U.UC_X86_REG_RCX),
            uc.reg_read(U.UC_X86_REG_R11), uc.reg_read(U.UC_X86_REG_CS),
            uc.reg_read(U.UC_X86_REG_SS))
        from_user = not vcpu.kernel_mode
        if from_user:
            m.toggle_guest_mode(vcpu)       # to kernel mode and the kernel's page tables
            sp = vcpu.kernel_sp
        else:
            sp = rsp
            cs &= ~3                        # tells the guest the trap came from kernel mode
        sp &= ~0xF
        if 0xFFFF800000000000 <= sp < 0xFFFF880000000000 + 60:
            m.crash(f"bounce frame for {kind} would be written into Xen's area ({sp:#x})")
            return None
        saved_mask = self.upcall_mask(vcpu)
        if interrupt:
            self.set_upcall_mask(vcpu, 1)
        guest_flags = (rflags & ~RFLAGS_IF) | (0 if saved_mask else RFLAGS_IF)
        words = [rcx, r11]
        if error_code is not None:
            words.append(error_code)
        words += [rip, (cs & 0xFFFF) | saved_mask << 32, guest_flags, rsp, ss]
        sp -= 8 * len(words)
        if not m.guest.write(sp, struct.pack(f"<{len(words)}Q", *words)):
            m.crash(f"fault while writing the bounce frame for {kind} at {sp:#x}")
            return None
        uc.reg_write(U.UC_X86_REG_RSP, sp)
        uc.reg_write(U.UC_X86_REG_RFLAGS, rflags & ~RFLAGS_CLEARED_ON_TRAP)
        m.set_guest_ip(target)
        return Bounce(kind, vector, target, error_code, sp, from_user)

    def _bounce32(self, vcpu: Vcpu, target: int, target_cs: int, kind: str, vector: int | None,
                  error_code: int | None, interrupt: bool) -> Bounce | None:
        m = self.m
        uc = m.cpu.uc
        eip, esp, eflags, cs, _ss = (
            uc.reg_read(U.UC_X86_REG_EIP), uc.reg_read(U.UC_X86_REG_ESP),
            uc.reg_read(U.UC_X86_REG_EFLAGS), uc.reg_read(U.UC_X86_REG_CS),
            uc.reg_read(U.UC_X86_REG_SS))
        if cs & 3 != 1:
            m.crash(f"xendbg cannot yet deliver {kind} to a 32-bit guest from ring {cs & 3} "
                    "(ring 3 → ring 1 transitions are not implemented)")
            return None
        saved_mask = self.upcall_mask(vcpu)
        if interrupt:
            self.set_upcall_mask(vcpu, 1)
        guest_flags = (eflags & ~RFLAGS_IF) | (0 if saved_mask else RFLAGS_IF)
        words = [] if error_code is None else [error_code]
        words += [eip, (cs & 0xFFFF) | saved_mask << 16, guest_flags]
        sp = (esp - 4 * len(words)) & 0xFFFFFFFF
        if sp >= self.abi.hypervisor_start:
            m.crash(f"bounce frame for {kind} would be written into Xen's area ({sp:#x})")
            return None
        if not m.guest.write(sp, struct.pack(f"<{len(words)}I", *[w & 0xFFFFFFFF for w in words])):
            m.crash(f"fault while writing the bounce frame for {kind} at {sp:#x}")
            return None
        uc.reg_write(U.UC_X86_REG_ESP, sp)
        uc.reg_write(U.UC_X86_REG_EFLAGS, eflags & ~RFLAGS_CLEARED_ON_TRAP)
        if target_cs and target_cs != cs:
            m.crash(f"{kind} handler uses code selector {target_cs:#x}; xendbg supports only "
                    f"the flat kernel selector {self.abi.kernel_cs:#x}")
            return None
        m.set_guest_ip(target)
        return Bounce(kind, vector, target, error_code, sp, False)

    # -- the three kinds of delivery ---------------------------------------------------------
    def exception(self, vcpu: Vcpu, vector: int, error_code: int | None = None) -> Bounce | None:
        """A hardware exception (or int3/into): the trap table's handler, no DPL check."""
        ti = vcpu.trap_table.get(vector)
        if ti is None or ti.address == 0:
            what = vector_name(vector)
            extra = f" error code {error_code:#x}" if error_code is not None else ""
            self.m.crash(f"unhandled {what}{extra} at {self.m.cpu.ip:#x}: the guest registered "
                         "no handler for it")
            return None
        return self.bounce(vcpu, ti.address, kind="exception", vector=vector, error_code=error_code,
                           interrupt=bool(ti.flags & X.TI_CLEAR_IF), target_cs=ti.cs)

    def software_interrupt(self, vcpu: Vcpu, vector: int, insn_len: int = 2) -> Bounce | None:
        """``int $N``: allowed if the gate's DPL admits the guest's privilege, else #GP."""
        ti = vcpu.trap_table.get(vector)
        guest_ring = 0 if vcpu.kernel_mode else 3
        if self.abi.bits == 32:
            guest_ring = self.m.cpu.cpl()
        if ti is None or ti.address == 0 or (ti.flags & X.TI_DPL_MASK) < guest_ring:
            # As the hardware would: #GP with the IDT bit set, at the int instruction.
            self.m.set_guest_ip(self.m.cpu.ip - insn_len)
            return self.exception(vcpu, 13, (vector << 3) | 2)
        return self.bounce(vcpu, ti.address, kind="interrupt", vector=vector,
                           interrupt=bool(ti.flags & X.TI_CLEAR_IF), target_cs=ti.cs)

    def upcall(self, vcpu: Vcpu) -> Bounce | None:
        cb = vcpu.callbacks.get(X.CALLBACKTYPE_event)
        if cb is None or cb.address == 0:
            return None       # no callback: events stay pending, as on Xen
        return self.bounce(vcpu, cb.address, kind="upcall", interrupt=True, target_cs=cb.cs)

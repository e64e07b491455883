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
flag) masks events. A trap that cannot be delivered — no handler, a fault while writing the frame,
or (32-bit, from ring 2/3) a ``stack_switch`` selector that will not load — crashes the domain with
the reason, as Xen does.

The failsafe callback (``TBF_FAILSAFE``) is how Xen reports that it could not return to the guest
because a segment register would not load (the ``iret`` of its exit path faulted). Its frame has no
error code and, below RIP, the data selectors Xen found loaded::

    64-bit: RCX, R11, DS, ES, FS, GS, RIP, CS, RFLAGS, RSP, SS
    32-bit: DS, ES, FS, GS, EIP, CS, EFLAGS, [ESP, SS]

RIP, CS, RFLAGS, RSP and SS there are the values Xen was trying to return with, not where the guest
trapped; the callback was registered with ``CALLBACKF_mask_events`` if it should mask events.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from unicorn import UcError
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


def _kernel_ss_fault(m, ss: int) -> str | None:
    """Why the 32-bit kernel stack selector ``ss`` would not load at ring 1; None if it would."""
    # iret.py imports this module (GuestFrame, the flag bits), so its descriptor checks are
    # imported here, when first needed.
    from xendbg.machine.iret import stack_selector_fault
    return stack_selector_fault(m, ss & 0xFFFF, 1)


def vector_name(vector: int) -> str:
    return EXCEPTION_NAMES.get(vector, f"vector {vector:#x}")


@dataclass(frozen=True)
class GuestFrame:
    """Registers to put in a bounce frame instead of the CPU's (Xen's ``guest_cpu_user_regs``)."""

    ip: int
    cs: int
    flags: int
    sp: int
    ss: int
    rcx: int = 0          # 64-bit only
    r11: int = 0


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
               target_cs: int = 0, frame: GuestFrame | None = None,
               failsafe_selectors: tuple[int, int, int, int] | None = None) -> Bounce | None:
        """Enter the guest at ``target`` with a bounce frame; None if the domain was crashed.

        ``frame`` replaces the CPU's registers as the state saved in the frame (the failsafe
        callback saves the state Xen failed to return to); ``failsafe_selectors`` (DS, ES, FS, GS)
        makes it a failsafe frame.
        """
        if target == 0:
            what = vector_name(vector) if vector is not None else kind
            self.m.crash(f"no guest handler for {what} (trap table / callback not registered)")
            return None
        if self.abi.bits == 64:
            return self._bounce64(vcpu, target, kind, vector, error_code, interrupt, frame,
                                  failsafe_selectors)
        return self._bounce32(vcpu, target, target_cs, kind, vector, error_code, interrupt, frame,
                              failsafe_selectors)

    def _bounce64(self, vcpu: Vcpu, target: int, kind: str, vector: int | None,
                  error_code: int | None, interrupt: bool, frame: GuestFrame | None = None,
                  selectors: tuple[int, int, int, int] | None = None) -> Bounce | None:
        m = self.m
        if frame is None:
            rip, rsp, rflags, rcx, r11, cs, ss = m.cpu.bounce_regs.read()
        else:
            rip, rsp, rflags, rcx, r11, cs, ss = (frame.ip, frame.sp, frame.flags, frame.rcx,
                                                  frame.r11, frame.cs, frame.ss)
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
        # The frame's IOPL is the virtual one when the guest asked for architectural IOPL.
        iopl = vcpu.iopl << 12 if m.domain.vm_assist & (1 << X.VMASST_TYPE_architectural_iopl) \
            else 0
        guest_flags = (rflags & ~(RFLAGS_IF | RFLAGS_IOPL)) | (0 if saved_mask else RFLAGS_IF) | iopl
        words = [rcx, r11]
        if selectors is not None:
            words += list(selectors)
        if error_code is not None:
            words.append(error_code)
        words += [rip, (cs & 0xFFFF) | saved_mask << 32, guest_flags, rsp, ss & 0xFFFF]
        sp = (sp - 8 * len(words)) & 0xFFFFFFFFFFFFFFFF
        if not m.guest.write(sp, struct.pack(f"<{len(words)}Q", *words)):
            m.crash(f"fault while writing the bounce frame for {kind} at {sp:#x}")
            return None
        write = m.cpu.write_plain
        write(U.UC_X86_REG_RSP, sp)
        write(U.UC_X86_REG_RFLAGS, rflags & ~RFLAGS_CLEARED_ON_TRAP)
        m.set_guest_ip(target)
        return Bounce(kind, vector, target, error_code, sp, from_user)

    def _bounce32(self, vcpu: Vcpu, target: int, target_cs: int, kind: str, vector: int | None,
                  error_code: int | None, interrupt: bool, frame: GuestFrame | None = None,
                  selectors: tuple[int, int, int, int] | None = None) -> Bounce | None:
        m = self.m
        write = m.cpu.write_plain
        # One batch for the CPU's state: CS is needed whatever ``frame`` says, SS below.
        cpu_eip, cpu_esp, cpu_eflags, cpu_cs, cpu_ss = m.cpu.bounce_regs.read()
        if frame is None:
            eip, esp, eflags, cs, ss = cpu_eip, cpu_esp, cpu_eflags, cpu_cs, cpu_ss
        else:
            eip, esp, eflags, cs, ss = frame.ip, frame.sp, frame.flags, frame.cs, frame.ss
        if cpu_cs & 3 != 1:
            m.crash(f"xendbg cannot yet deliver {kind} to a 32-bit guest from ring {cpu_cs & 3} "
                    "(ring 3 → ring 1 transitions are not implemented)")
            return None
        outer = bool(cs & 2)       # the saved state is ring 2/3: the frame goes on the kernel stack
        if outer:
            esp, frame_ss = vcpu.kernel_sp, vcpu.kernel_ss
            # Xen loads the stack_switch selector before it writes anything (compat
            # create_bounce_frame); a selector that will not load crashes the domain there. The
            # CPU would refuse it the same way when xendbg puts it in SS below.
            why = _kernel_ss_fault(m, frame_ss)
            if why is not None:
                m.crash(f"cannot deliver {kind} from ring {cs & 3}: the kernel stack selector "
                        f"{frame_ss:#x} given to stack_switch is unusable ({why})")
                return None
        else:
            frame_ss = ss
        saved_mask = self.upcall_mask(vcpu)
        if interrupt:
            self.set_upcall_mask(vcpu, 1)
        guest_flags = (eflags & ~RFLAGS_IF) | (0 if saved_mask else RFLAGS_IF)
        words = list(selectors) if selectors is not None else []
        if error_code is not None:
            words.append(error_code)
        words += [eip, (cs & 0xFFFF) | saved_mask << 16, guest_flags]
        if outer:
            words += [frame.sp if frame is not None else esp, ss & 0xFFFF]
        sp = (esp - 4 * len(words)) & 0xFFFFFFFF
        if sp >= self.abi.hypervisor_start:
            m.crash(f"bounce frame for {kind} would be written into Xen's area ({sp:#x})")
            return None
        if not m.guest.write(sp, struct.pack(f"<{len(words)}I", *[w & 0xFFFFFFFF for w in words])):
            m.crash(f"fault while writing the bounce frame for {kind} at {sp:#x}")
            return None
        if target_cs and target_cs != cpu_cs:
            m.crash(f"{kind} handler uses code selector {target_cs:#x}; xendbg supports only "
                    f"the flat kernel selector {self.abi.kernel_cs:#x}")
            return None
        if frame_ss & 0xFFFF != cpu_ss & 0xFFFF:         # nothing above wrote SS
            try:
                write(U.UC_X86_REG_SS, frame_ss & 0xFFFF)
            except UcError as e:
                # The checks above mirror the CPU's; should they miss a case, the load faults in
                # Unicorn, and on Xen that fault is a domain crash too, never a debugger error.
                m.crash(f"cannot deliver {kind}: loading stack selector {frame_ss & 0xFFFF:#x} "
                        f"faulted ({e})")
                return None
        write(U.UC_X86_REG_ESP, sp)
        write(U.UC_X86_REG_EFLAGS, eflags & ~RFLAGS_CLEARED_ON_TRAP)
        m.set_guest_ip(target)
        return Bounce(kind, vector, target, error_code, sp, outer)

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

    def failsafe(self, vcpu: Vcpu, frame: GuestFrame) -> Bounce | None:
        """Xen's ``failsafe_callback``: returning to ``frame`` faulted; enter the guest's handler.

        Without a callback (address 0, or a null code selector on 32-bit) Xen crashes the domain.
        """
        cb = vcpu.callbacks.get(X.CALLBACKTYPE_failsafe)
        if cb is None or cb.address == 0:
            self.m.crash(f"return to CS:IP {frame.cs & 0xFFFF:#x}:{frame.ip:#x} faulted and the "
                         "guest registered no failsafe callback")
            return None
        if self.abi.bits == 32 and cb.cs & ~3 == 0:
            self.m.crash("return to the guest faulted and its failsafe callback has a null "
                         "code selector")
            return None
        read = self.m.cpu.read_plain
        selectors = tuple(read(r) & 0xFFFF for r in (U.UC_X86_REG_DS, U.UC_X86_REG_ES,
                                                     U.UC_X86_REG_FS, U.UC_X86_REG_GS))
        return self.bounce(vcpu, cb.address, kind="failsafe",
                           interrupt=bool(cb.flags & X.CALLBACKF_mask_events), target_cs=cb.cs,
                           frame=frame, failsafe_selectors=selectors)

    def upcall(self, vcpu: Vcpu) -> Bounce | None:
        cb = vcpu.callbacks.get(X.CALLBACKTYPE_event)
        if cb is None or cb.address == 0:
            return None       # no callback: events stay pending, as on Xen
        frame = None
        if self.m._in_syscall_hook:
            # On the way out of a 64-bit hypercall the CPU's RIP is still at the syscall (Unicorn
            # adds its length when the hook returns): the guest resumes, and the frame saves,
            # the instruction after it.
            # (64-bit only: a 32-bit guest calls Xen with int $0x82, never syscall.)
            rip, rsp, rflags, rcx, r11, cs, ss = self.m.cpu.bounce_regs.read()
            frame = GuestFrame(rip + 2, cs, rflags, rsp, ss, rcx, r11)
        return self.bounce(vcpu, cb.address, kind="upcall", interrupt=True, target_cs=cb.cs,
                           frame=frame)

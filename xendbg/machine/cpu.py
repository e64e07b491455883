"""The emulated x86 CPU: Unicorn set up as a PV-capable processor.

Facts this module is built on (measured, ``shared/reference/UNICORN.md``):

* Unicorn's ``mem_map`` works on physical addresses once paging is on, so machine memory is mapped
  once at physical 0 and the guest's own page tables (which hold machine addresses under Xen's direct
  paging) are walked by the CPU itself.
* ``reg_write`` cannot change the privilege level. The guest is entered through a ring-0 ``iret``
  trampoline in Xen's part of the address space; afterwards the CPL is that of the guest (3 for a
  64-bit PV kernel, 1 for a 32-bit one) and stays so.
* Every exception reaches an ``UC_HOOK_INTR`` callback and never the guest IDT. Unicorn never resets
  ``old_exception`` (it skips ``do_interrupt``), so the second fault would become a #DF: the hook
  resets it through the CPU context first (:meth:`Cpu.exception_entry`).
* The #PF error code is not a register: it is read from the CPU context at an offset calibrated at
  start-up.
* Registers are read in batches through the raw C API (``uc_reg_read_batch``), ~10× cheaper than the
  binding's per-register calls. The plain 64-bit registers of the hot paths (rIP, rSP, rAX, CR3, CS)
  also go through the raw single-register calls; anything with another layout (GDTR, MSRs, FPU/SIMD)
  keeps the binding's ``reg_read``/``reg_write``, which pick the right ctypes type.

This module knows nothing of Xen's policy: :class:`Cpu` exposes registers, hooks and the trampoline;
``traps.py`` and ``hypercalls.py`` decide what a trap means.
"""

from __future__ import annotations

import ctypes
import struct
from collections.abc import Sequence

from unicorn import (
    UC_ARCH_X86,
    UC_HOOK_INSN,
    UC_HOOK_INSN_INVALID,
    UC_HOOK_INTR,
    UC_MODE_32,
    UC_MODE_64,
    UC_PROT_ALL,
    Uc,
    UcError,
)
from unicorn import x86_const as X
from unicorn.unicorn_py3.unicorn import uclib

from xendbg.machine.abi.layout import Abi
from xendbg.machine.memory import MachineMemory

CR0_PE, CR0_MP, CR0_ET, CR0_NE, CR0_WP, CR0_PG = 1, 2, 0x10, 0x20, 1 << 16, 1 << 31
CR4_PAE, CR4_PGE, CR4_OSFXSR, CR4_OSXMMEXCPT = 1 << 5, 1 << 7, 1 << 9, 1 << 10
EFER_SCE, EFER_LME, EFER_LMA, EFER_NXE = 1, 1 << 8, 1 << 10, 1 << 11
MSR_EFER = 0xC0000080

RFLAGS_IF = 1 << 9
RFLAGS_ALWAYS = 1 << 1
RFLAGS_IOPL = 3 << 12

# Register sets read in one batch at the hot entry points.
REGS64 = (X.UC_X86_REG_RAX, X.UC_X86_REG_RBX, X.UC_X86_REG_RCX, X.UC_X86_REG_RDX,
          X.UC_X86_REG_RSI, X.UC_X86_REG_RDI, X.UC_X86_REG_RBP, X.UC_X86_REG_RSP,
          X.UC_X86_REG_R8, X.UC_X86_REG_R9, X.UC_X86_REG_R10, X.UC_X86_REG_R11,
          X.UC_X86_REG_R12, X.UC_X86_REG_R13, X.UC_X86_REG_R14, X.UC_X86_REG_R15,
          X.UC_X86_REG_RIP, X.UC_X86_REG_RFLAGS, X.UC_X86_REG_CS, X.UC_X86_REG_SS,
          X.UC_X86_REG_DS, X.UC_X86_REG_ES, X.UC_X86_REG_FS, X.UC_X86_REG_GS)
NAMES64 = ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp", "r8", "r9", "r10", "r11",
           "r12", "r13", "r14", "r15", "rip", "rflags", "cs", "ss", "ds", "es", "fs", "gs")
REGS32 = (X.UC_X86_REG_EAX, X.UC_X86_REG_EBX, X.UC_X86_REG_ECX, X.UC_X86_REG_EDX,
          X.UC_X86_REG_ESI, X.UC_X86_REG_EDI, X.UC_X86_REG_EBP, X.UC_X86_REG_ESP,
          X.UC_X86_REG_EIP, X.UC_X86_REG_EFLAGS, X.UC_X86_REG_CS, X.UC_X86_REG_SS,
          X.UC_X86_REG_DS, X.UC_X86_REG_ES, X.UC_X86_REG_FS, X.UC_X86_REG_GS)
NAMES32 = ("eax", "ebx", "ecx", "edx", "esi", "edi", "ebp", "esp", "eip", "eflags", "cs", "ss",
           "ds", "es", "fs", "gs")

# Hypercall argument registers (ABI.md §2), then the instruction and stack pointers.
HCALL64 = (X.UC_X86_REG_RAX, X.UC_X86_REG_RDI, X.UC_X86_REG_RSI, X.UC_X86_REG_RDX,
           X.UC_X86_REG_R10, X.UC_X86_REG_R8, X.UC_X86_REG_R9, X.UC_X86_REG_RIP, X.UC_X86_REG_RSP)
HCALL32 = (X.UC_X86_REG_EAX, X.UC_X86_REG_EBX, X.UC_X86_REG_ECX, X.UC_X86_REG_EDX,
           X.UC_X86_REG_ESI, X.UC_X86_REG_EDI, X.UC_X86_REG_EBP, X.UC_X86_REG_EIP, X.UC_X86_REG_ESP)

# What a bounce frame saves (traps.py), read in one batch: 64-bit in this order (the syscall
# upcall path needs RCX and R11 too), 32-bit the same without them.
BOUNCE64 = (X.UC_X86_REG_RIP, X.UC_X86_REG_RSP, X.UC_X86_REG_RFLAGS, X.UC_X86_REG_RCX,
            X.UC_X86_REG_R11, X.UC_X86_REG_CS, X.UC_X86_REG_SS)
BOUNCE32 = (X.UC_X86_REG_EIP, X.UC_X86_REG_ESP, X.UC_X86_REG_EFLAGS, X.UC_X86_REG_CS,
            X.UC_X86_REG_SS)

_UC_CONTEXT_HEADER = 40           # bytes before CPUX86State in a uc_context (UNICORN.md §3)
_OLD_EXCEPTION_FROM_ERROR_CODE = 112
_MASK64 = 0xFFFFFFFFFFFFFFFF

# The same C entry points as ``uclib``'s, through a second handle on the already-loaded library
# whose functions have no ``argtypes``: the binding's prototypes convert every argument through
# ``LP_c_int``/``LP_c_void_p`` checks, which cost more than the C call itself (~1 µs per call on
# the hot path). Without prototypes the arguments must already be C objects: the engine handle as
# ``c_void_p``, arrays and ``byref``s for the pointers, small Python ints for ``int``s.
_raw = ctypes.CDLL(uclib._name, handle=uclib._handle)
_reg_read_batch = _raw.uc_reg_read_batch
_reg_write_batch = _raw.uc_reg_write_batch
_reg_read = _raw.uc_reg_read
_reg_write = _raw.uc_reg_write
_c_uint64 = ctypes.c_uint64
_byref = ctypes.byref


class RegBatch:
    """A fixed list of plain 64-bit registers read or written with one raw C call.

    Not thread-safe (one value buffer per batch): use it on the emulator thread only.
    """

    def __init__(self, uc: Uc, regs: Sequence[int]) -> None:
        n = len(regs)
        self._uch = uc._uch
        self._n = n
        self._ids = (ctypes.c_int32 * n)(*regs)
        self._vals = (ctypes.c_uint64 * n)()
        base = ctypes.addressof(self._vals)
        self._ptrs = (ctypes.c_void_p * n)(*[base + 8 * i for i in range(n)])
        # Unpacking the buffer as one struct is ~10x cheaper than iterating the ctypes array.
        self._unpack = struct.Struct(f"<{n}Q").unpack_from

    def read(self) -> tuple[int, ...]:
        err = _reg_read_batch(self._uch, self._ids, self._ptrs, self._n)
        if err:
            raise RuntimeError(f"uc_reg_read_batch failed ({err})")
        return self._unpack(self._vals)

    def write(self, values: Sequence[int]) -> None:
        """Write ``values`` to the first ``len(values)`` registers; the others get the values of the
        last read or write of this batch (write all of them, or read first)."""
        for i, value in enumerate(values):
            self._vals[i] = value & _MASK64
        err = _reg_write_batch(self._uch, self._ids, self._ptrs, self._n)
        if err:
            raise RuntimeError(f"uc_reg_write_batch failed ({err})")


class Cpu:
    """One vCPU's Unicorn engine, with machine memory mapped at physical address 0."""

    def __init__(self, abi: Abi, memory: MachineMemory) -> None:
        self.abi = abi
        self.memory = memory
        self.uc = Uc(UC_ARCH_X86, UC_MODE_64 if abi.bits == 64 else UC_MODE_32)
        self.uc.mem_map_ptr(0, memory.size, UC_PROT_ALL, memory.host_address)
        self.is64 = abi.bits == 64
        self.hcall = RegBatch(self.uc, HCALL64 if self.is64 else HCALL32)
        # The hypercall registers plus CS (index 9), read at a trap: the int $0x82 path checks the
        # caller's privilege from it. Read-only (``hcall`` is the one to write).
        self.hcall_cs = RegBatch(self.uc, (HCALL64 if self.is64 else HCALL32) + (X.UC_X86_REG_CS,))
        self._uch = self.uc._uch
        # Read-only, like ``hcall_cs``: the registers a bounce frame saves (``BOUNCE64``/``32``).
        self.bounce_regs = RegBatch(self.uc, BOUNCE64 if self.is64 else BOUNCE32)
        self.all_regs = RegBatch(self.uc, REGS64 if self.is64 else REGS32)
        self.reg_names = NAMES64 if self.is64 else NAMES32
        self.ip_reg = X.UC_X86_REG_RIP if self.is64 else X.UC_X86_REG_EIP
        self.sp_reg = X.UC_X86_REG_RSP if self.is64 else X.UC_X86_REG_ESP
        self.ax_reg = X.UC_X86_REG_RAX if self.is64 else X.UC_X86_REG_EAX
        self.flags_reg = X.UC_X86_REG_RFLAGS if self.is64 else X.UC_X86_REG_EFLAGS
        self._hooks: list[object] = []   # keep ctypes callbacks alive
        # Exception-state access through a reusable context (UNICORN.md §2 and §3).
        self._ctx = self.uc.context_save()
        self._ctx_ptr = self._ctx.context
        self._ctx_addr = ctypes.cast(self._ctx_ptr, ctypes.c_void_p).value
        self._error_code_off = self._calibrate_error_code_offset()

    # -- set-up ---------------------------------------------------------------------------------
    def _calibrate_error_code_offset(self) -> int:
        """Find ``env->error_code`` in the context: 64 bytes before dr[6]/dr[7]'s reset values."""
        blob = bytes(ctypes.string_at(self._ctx_addr, self._ctx.size + _UC_CONTEXT_HEADER))
        pattern = struct.pack("<QQ", 0xFFFF0FF0, 0x400)
        pos = blob.find(pattern)
        if pos < 0:
            raise RuntimeError("cannot locate the exception state in Unicorn's CPU context")
        return pos - 64

    def setup_paging(self, cr3: int, gdt_base: int, gdt_limit: int) -> None:
        uc = self.uc
        uc.reg_write(X.UC_X86_REG_GDTR, (0, gdt_base, gdt_limit, 0))
        uc.reg_write(X.UC_X86_REG_CR3, cr3)
        uc.reg_write(X.UC_X86_REG_CR4, CR4_PAE | CR4_PGE | CR4_OSFXSR | CR4_OSXMMEXCPT)
        if self.is64:
            uc.msr_write(MSR_EFER, EFER_SCE | EFER_LME | EFER_LMA | EFER_NXE)
        else:
            uc.msr_write(MSR_EFER, EFER_NXE)
        uc.reg_write(X.UC_X86_REG_CR0, CR0_PE | CR0_MP | CR0_ET | CR0_NE | CR0_WP | CR0_PG)

    def prepare_entry(self, trampoline_va: int, stack_va: int, stack_ma: int, ring0_cs: int,
                      ring0_ds: int, rip: int, cs: int, rflags: int, rsp: int, ss: int,
                      data_sel: int) -> None:
        """Arrange for the next ``emu_start`` at ``trampoline_va`` to ``iret`` into the guest.

        The trampoline page holds one ``iretq`` (64-bit) or ``iretd`` (32-bit); its frame is written
        on a Xen stack page. This is the only time the CPU runs at ring 0.
        """
        if self.is64:
            frame = struct.pack("<5Q", rip, cs, rflags, rsp, ss)
        else:
            self.uc.reg_write(X.UC_X86_REG_CS, ring0_cs)
            self.uc.reg_write(X.UC_X86_REG_SS, ring0_ds)
            frame = struct.pack("<5I", rip, cs, rflags, rsp, ss)
        self.memory.write(stack_ma, frame)
        for reg in (X.UC_X86_REG_DS, X.UC_X86_REG_ES, X.UC_X86_REG_FS, X.UC_X86_REG_GS):
            self.uc.reg_write(reg, data_sel)
        self.uc.reg_write(self.sp_reg, stack_va)
        self.uc.reg_write(self.ip_reg, trampoline_va)

    # -- registers ------------------------------------------------------------------------------
    def regs(self) -> dict[str, int]:
        return dict(zip(self.reg_names, self.all_regs.read(), strict=False))

    def reg_read(self, reg: int) -> int:
        return self.uc.reg_read(reg)

    def reg_write(self, reg: int, value: int) -> None:
        self.uc.reg_write(reg, value)

    def read_plain(self, reg: int) -> int:
        """Read a plain 64-bit register (a GPR, rIP, rFLAGS, a selector, a CR) with the raw C call.

        A fresh value buffer per call, as the binding has: a read from another thread while the
        guest runs does not clobber the emulator thread's.
        """
        val = _c_uint64()
        err = _reg_read(self._uch, reg, _byref(val))
        if err:
            raise UcError(err)
        return val.value

    def write_plain(self, reg: int, value: int) -> None:
        """Write a plain 64-bit register with the raw C call (``value`` truncated to 64 bits, as the
        binding's ``c_uint64(value)`` does). Writing rIP from a hook has the same effect as through the
        binding: the engine leaves the current block and resumes there."""
        err = _reg_write(self._uch, reg, _byref(_c_uint64(value)))
        if err:
            raise UcError(err)

    def write_ax(self, value: int) -> None:
        """rAX ← ``value``: a hypercall's result (``write_plain`` for the one register)."""
        err = _reg_write(self._uch, self.ax_reg, _byref(_c_uint64(value)))
        if err:
            raise UcError(err)

    @property
    def ip(self) -> int:
        return self.read_plain(self.ip_reg)

    @ip.setter
    def ip(self, value: int) -> None:
        self.write_plain(self.ip_reg, value)

    @property
    def sp(self) -> int:
        return self.read_plain(self.sp_reg)

    @sp.setter
    def sp(self, value: int) -> None:
        self.write_plain(self.sp_reg, value)

    @property
    def cr3(self) -> int:
        return self.read_plain(X.UC_X86_REG_CR3)

    @cr3.setter
    def cr3(self, value: int) -> None:
        self.write_plain(X.UC_X86_REG_CR3, value)

    def msr_read(self, msr: int) -> int:
        return self.uc.msr_read(msr)

    def msr_write(self, msr: int, value: int) -> None:
        self.uc.msr_write(msr, value)

    def cpl(self) -> int:
        return self.read_plain(X.UC_X86_REG_CS) & 3

    # -- exceptions -----------------------------------------------------------------------------
    def exception_entry(self) -> int:
        """Call first in the INTR hook: reset ``old_exception``, return ``env->error_code``.

        Must run before any register write in the hook, because the context restore it does
        overwrites the registers with their values at entry.
        """
        return self._reset_old_exception()

    def _reset_old_exception(self) -> int:
        """Clear ``env->old_exception`` through the CPU context; return ``env->error_code``."""
        uclib.uc_context_save(self.uc._uch, self._ctx_ptr)
        base = self._ctx_addr + self._error_code_off
        error_code = ctypes.c_int32.from_address(base).value & 0xFFFFFFFF
        ctypes.c_int32.from_address(base + _OLD_EXCEPTION_FROM_ERROR_CODE).value = -1
        uclib.uc_context_restore(self.uc._uch, self._ctx_ptr)
        return error_code

    def cr2(self) -> int:
        return self.read_plain(X.UC_X86_REG_CR2)

    # -- hooks ----------------------------------------------------------------------------------
    def hook_syscall(self, callback) -> None:
        self._hooks.append(self.uc.hook_add(UC_HOOK_INSN, callback, None, 1, 0,
                                            X.UC_X86_INS_SYSCALL))

    def hook_intr(self, callback) -> None:
        self._hooks.append(self.uc.hook_add(UC_HOOK_INTR, callback))

    def hook_invalid(self, callback) -> None:
        self._hooks.append(self.uc.hook_add(UC_HOOK_INSN_INVALID, callback))

    def hook_cpuid(self, callback) -> None:
        self._hooks.append(self.uc.hook_add(UC_HOOK_INSN, callback, None, 1, 0, X.UC_X86_INS_CPUID))

    def hook_in_out(self, on_in, on_out) -> None:
        self._hooks.append(self.uc.hook_add(UC_HOOK_INSN, on_in, None, 1, 0, X.UC_X86_INS_IN))
        self._hooks.append(self.uc.hook_add(UC_HOOK_INSN, on_out, None, 1, 0, X.UC_X86_INS_OUT))

    # -- running --------------------------------------------------------------------------------
    def start(self, begin: int, until: int) -> None:
        # When emulation ends, Unicorn drops the translation at ``until - 1``; translating that
        # address with the guest's privilege faults when ``until`` is in a page the guest may not
        # touch (Xen's area, from a ring-3 pv64 kernel), and the swallowed #PF leaves
        # ``old_exception`` set. The guest's next #GP or #PF would then arrive as a #DF (found by
        # the hypercall fuzzer: every first fault of a run slice). Clear it before each start.
        self._reset_old_exception()
        self.uc.emu_start(begin, until)

    def stop(self) -> None:
        """Stop from inside a hook (synchronous). Never call from another thread."""
        self.uc.emu_stop()

    def flush_tb(self) -> None:
        self.uc.ctl_flush_tb()

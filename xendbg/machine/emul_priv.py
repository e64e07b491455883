"""Privileged-instruction emulation on #GP (Xen's ``pv/emul-priv-op.c``); the policy is in ``priv.py``.

Only instructions a PV kernel legitimately executes are emulated; the instruction is decoded from
guest memory (REX prefixes understood), its effect applied, and RIP moved past it. Anything else
returns False and the guest receives the #GP.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable

from unicorn import x86_const as U
from unicorn.unicorn_py3.unicorn import uclib

from xendbg.machine import priv
from xendbg.machine.cpu import Cpu

GPR64 = (U.UC_X86_REG_RAX, U.UC_X86_REG_RCX, U.UC_X86_REG_RDX, U.UC_X86_REG_RBX,
         U.UC_X86_REG_RSP, U.UC_X86_REG_RBP, U.UC_X86_REG_RSI, U.UC_X86_REG_RDI,
         U.UC_X86_REG_R8, U.UC_X86_REG_R9, U.UC_X86_REG_R10, U.UC_X86_REG_R11,
         U.UC_X86_REG_R12, U.UC_X86_REG_R13, U.UC_X86_REG_R14, U.UC_X86_REG_R15)
GPR32 = (U.UC_X86_REG_EAX, U.UC_X86_REG_ECX, U.UC_X86_REG_EDX, U.UC_X86_REG_EBX,
         U.UC_X86_REG_ESP, U.UC_X86_REG_EBP, U.UC_X86_REG_ESI, U.UC_X86_REG_EDI)

CR4_VIEW = (1 << 5) | (1 << 9) | (1 << 10)        # PAE, OSFXSR, OSXMMEXCPT


class CpuidRegs:
    """CPUID's register traffic on one engine: leaf and subleaf in, EAX..EDX out.

    Both the plain ``cpuid`` (hooked) and Xen's forced form come here. GRUB runs ``cpuid; rdtsc``
    (``grub_get_tsc`` serialises with CPUID) every ~130 instructions of its idle loop; six
    per-register binding calls per CPUID cost ~133k host instructions (callgrind). Two raw batch
    calls (``uc_reg_read_batch``/``uc_reg_write_batch``) with their arguments converted to the
    C types once, here, cost a fraction of that.

    The outputs are 32-bit values written to the full registers: on a 64-bit vCPU CPUID clears the
    upper halves of RAX, RBX, RCX and RDX, as the instruction does.
    """

    def __init__(self, cpu: Cpu) -> None:
        if cpu.is64:
            leaf_regs = (U.UC_X86_REG_RAX, U.UC_X86_REG_RCX)
            out_regs = (U.UC_X86_REG_RAX, U.UC_X86_REG_RBX, U.UC_X86_REG_RCX, U.UC_X86_REG_RDX)
        else:
            leaf_regs = (U.UC_X86_REG_EAX, U.UC_X86_REG_ECX)
            out_regs = (U.UC_X86_REG_EAX, U.UC_X86_REG_EBX, U.UC_X86_REG_ECX, U.UC_X86_REG_EDX)
        self._uch = cpu.uc._uch
        self._leaf_ids, self._leaf_vals, self._leaf_ptrs = _raw_batch(leaf_regs)
        self._out_ids, self._out_vals, self._out_ptrs = _raw_batch(out_regs)

    def emulate(self, policy: Callable[[int, int], tuple[int, int, int, int]]) -> None:
        """Answer the CPUID in the registers with ``policy(leaf, subleaf)``; RIP is the caller's."""
        if uclib.uc_reg_read_batch(self._uch, self._leaf_ids, self._leaf_ptrs, 2):
            raise RuntimeError("uc_reg_read_batch failed")
        vals = self._leaf_vals
        out = self._out_vals
        out[0], out[1], out[2], out[3] = policy(vals[0] & 0xFFFFFFFF, vals[1] & 0xFFFFFFFF)
        if uclib.uc_reg_write_batch(self._uch, self._out_ids, self._out_ptrs, 4):
            raise RuntimeError("uc_reg_write_batch failed")


def _raw_batch(regs: tuple[int, ...]):
    """Register ids, a value array and its element pointers, already of the pointer types the
    binding declares for ``uc_reg_*_batch`` (so ctypes does no conversion per call)."""
    n = len(regs)
    ids = (ctypes.c_int * n)(*regs)
    vals = (ctypes.c_uint64 * n)()
    base = ctypes.addressof(vals)
    ptrs = (ctypes.c_void_p * n)(*[base + 8 * i for i in range(n)])
    id_type, ptr_type = uclib.uc_reg_read_batch.argtypes[1:3]
    # The casts keep their source arrays alive (ctypes records them in _objects); vals is held
    # by the instance.
    return ctypes.cast(ids, id_type), vals, ctypes.cast(ptrs, ptr_type)


def emulate_privileged_op(m) -> bool:
    ip = m.cpu.ip
    code = m.guest.read(ip, 15)
    if code is None:
        code = m.guest.read(ip, 1)
        if code is None:
            return False
    pos = 0
    rex = 0
    while pos < len(code) and code[pos] in (0x66, 0x67, 0xF2, 0xF3, 0x2E, 0x3E, 0x26, 0x36):
        pos += 1
    if m.is64 and pos < len(code) and 0x40 <= code[pos] <= 0x4F:
        rex = code[pos]
        pos += 1
    if pos >= len(code):
        return False
    op = code[pos]
    length = pos + 1
    if op == 0xF4:                                     # hlt: block until an event
        _advance(m, ip, length)
        m.block_vcpu()
        return True
    if op in (0xFA, 0xFB):                             # cli / sti: no-ops with enough IOPL
        if not m._io_allowed():
            return False
        _advance(m, ip, length)
        return True
    if op != 0x0F or pos + 1 >= len(code):
        return False
    op2 = code[pos + 1]
    length = pos + 2
    if op2 in (0x08, 0x09):                            # invd / wbinvd
        _advance(m, ip, length)
        return True
    if op2 == 0x06:                                    # clts
        m.set_fpu_ts(False)
        _advance(m, ip, length)
        return True
    if op2 == 0x30:                                    # wrmsr
        return _wrmsr(m, ip, length)
    if op2 == 0x32:                                    # rdmsr
        return _rdmsr(m, ip, length)
    if op2 in (0x20, 0x22, 0x21, 0x23) and pos + 2 < len(code):
        modrm = code[pos + 2]
        length = pos + 3
        reg = ((modrm >> 3) & 7) | (8 if rex & 4 else 0)
        rm = (modrm & 7) | (8 if rex & 1 else 0)
        gpr = (GPR64 if m.is64 else GPR32)[rm]
        if op2 == 0x20:
            value = _read_cr(m, reg)
            if value is None:
                return False
            m.cpu.uc.reg_write(gpr, value)
        elif op2 == 0x22:
            if not _write_cr(m, reg, m.cpu.uc.reg_read(gpr)):
                return False
        elif op2 == 0x21:
            if reg > 7 or reg in (4, 5):
                return False
            m.cpu.uc.reg_write(gpr, m.vcpu.debugreg[reg])
        else:
            from xendbg.machine.callback import do_set_debugreg
            if do_set_debugreg(m, reg, m.cpu.uc.reg_read(gpr)) != 0:
                return False
        _advance(m, ip, length)
        return True
    return False


def _advance(m, ip: int, length: int) -> None:
    m.cpu.ip = ip + length


def _read_cr(m, cr: int) -> int | None:
    if cr == 0:
        return m.cr0_view()
    if cr == 2:
        return m.vcpu.cr2
    if cr == 3:
        return m.abi.mfn_to_cr3(m.cpu.cr3 >> 12)
    if cr == 4:
        return CR4_VIEW
    return None


def _write_cr(m, cr: int, value: int) -> bool:
    if cr == 3:
        return m.mmu.write_cr3(m.vcpu, value)
    if cr == 0:
        # Only TS may change (Xen: "only CR0.TS is allowed to be changed").
        if (value ^ m.cr0_view()) & ~(1 << 3) & 0xFFFFFFFF:
            return False
        m.set_fpu_ts(bool(value & (1 << 3)))
        return True
    return False


def _regs_edx_eax(m) -> tuple[int, int, int]:
    uc = m.cpu.uc
    if m.is64:
        return (uc.reg_read(U.UC_X86_REG_RCX) & 0xFFFFFFFF, uc.reg_read(U.UC_X86_REG_RDX),
                uc.reg_read(U.UC_X86_REG_RAX))
    return (uc.reg_read(U.UC_X86_REG_ECX), uc.reg_read(U.UC_X86_REG_EDX),
            uc.reg_read(U.UC_X86_REG_EAX))


def _rdmsr(m, ip: int, length: int) -> bool:
    msr, _, _ = _regs_edx_eax(m)
    v = m.vcpu
    values = {priv.MSR_PAT: priv.PAT_VALUE, priv.MSR_MISC_ENABLE: priv.MISC_ENABLE_VALUE,
              priv.MSR_TSC: m.read_tsc(), priv.MSR_PLATFORM_ID: 0,
              priv.MSR_UCODE_REV: priv.UCODE_REV_VALUE}
    if m.is64:
        values.update({priv.MSR_FS_BASE: v.fs_base, priv.MSR_GS_BASE: v.gs_base_kernel,
                       priv.MSR_SHADOW_GS_BASE: v.gs_base_user,
                       priv.MSR_EFER: (1 << 0) | (1 << 8) | (1 << 10) | (1 << 11)})
    else:
        values[priv.MSR_EFER] = 1 << 11
    if msr not in values:
        return False
    value = values[msr]
    uc = m.cpu.uc
    ax, dx = (U.UC_X86_REG_RAX, U.UC_X86_REG_RDX) if m.is64 else (U.UC_X86_REG_EAX,
                                                                  U.UC_X86_REG_EDX)
    uc.reg_write(ax, value & 0xFFFFFFFF)
    uc.reg_write(dx, (value >> 32) & 0xFFFFFFFF)
    _advance(m, ip, length)
    return True


def _wrmsr(m, ip: int, length: int) -> bool:
    msr, edx, eax = _regs_edx_eax(m)
    value = (edx & 0xFFFFFFFF) << 32 | (eax & 0xFFFFFFFF)
    v = m.vcpu
    canonical = value < (1 << 47) or value >= 0xFFFF800000000000
    if m.is64 and msr in (priv.MSR_FS_BASE, priv.MSR_GS_BASE, priv.MSR_SHADOW_GS_BASE):
        if not canonical:
            return False
        if msr == priv.MSR_FS_BASE:
            v.fs_base = value
        elif msr == priv.MSR_GS_BASE:
            v.gs_base_kernel = value
        else:
            v.gs_base_user = value
        m.load_segment_bases()
    elif msr == priv.MSR_PAT and value == priv.PAT_VALUE:
        pass
    elif msr == priv.MSR_UCODE_REV:
        pass
    else:
        return False
    _advance(m, ip, length)
    return True

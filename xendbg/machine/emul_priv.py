"""Privileged-instruction emulation on #GP (Xen's ``pv/emul-priv-op.c``); the policy is in ``priv.py``.

Only instructions a PV kernel legitimately executes are emulated; the instruction is decoded from
guest memory (REX prefixes understood), its effect applied, and RIP moved past it. Anything else
returns False and the guest receives the #GP.
"""

from __future__ import annotations

from unicorn import x86_const as U

from xendbg.machine import priv

GPR64 = (U.UC_X86_REG_RAX, U.UC_X86_REG_RCX, U.UC_X86_REG_RDX, U.UC_X86_REG_RBX,
         U.UC_X86_REG_RSP, U.UC_X86_REG_RBP, U.UC_X86_REG_RSI, U.UC_X86_REG_RDI,
         U.UC_X86_REG_R8, U.UC_X86_REG_R9, U.UC_X86_REG_R10, U.UC_X86_REG_R11,
         U.UC_X86_REG_R12, U.UC_X86_REG_R13, U.UC_X86_REG_R14, U.UC_X86_REG_R15)
GPR32 = (U.UC_X86_REG_EAX, U.UC_X86_REG_ECX, U.UC_X86_REG_EDX, U.UC_X86_REG_EBX,
         U.UC_X86_REG_ESP, U.UC_X86_REG_EBP, U.UC_X86_REG_ESI, U.UC_X86_REG_EDI)

CR4_VIEW = (1 << 5) | (1 << 9) | (1 << 10)        # PAE, OSFXSR, OSXMMEXCPT


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

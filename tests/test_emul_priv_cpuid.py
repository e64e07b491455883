"""CPUID emulation through emul_priv.CpuidRegs (the batched register path): the registers get
exactly what the policy answers, the upper halves of the 64-bit registers are cleared, the leaf
and subleaf are taken from the low 32 bits, and no other register changes."""

from __future__ import annotations

import pytest
from unicorn import x86_const as U

from xendbg.machine import priv

LEAVES = [(0, 0), (1, 0), (7, 0), (7, 1), (0xD, 0), (0xD, 1), (0x80000001, 0),
          (priv.XEN_CPUID_BASE, 0), (priv.XEN_CPUID_BASE + 1, 0), (priv.XEN_CPUID_BASE + 2, 0),
          (priv.XEN_CPUID_BASE + 3, 0), (priv.XEN_CPUID_BASE + 4, 5)]

ABIS = {
    "hello-pv64": ((U.UC_X86_REG_RAX, U.UC_X86_REG_RBX, U.UC_X86_REG_RCX, U.UC_X86_REG_RDX),
                   (U.UC_X86_REG_RSI, U.UC_X86_REG_RDI, U.UC_X86_REG_R8, U.UC_X86_REG_R15)),
    "hello-pv32": ((U.UC_X86_REG_EAX, U.UC_X86_REG_EBX, U.UC_X86_REG_ECX, U.UC_X86_REG_EDX),
                   (U.UC_X86_REG_ESI, U.UC_X86_REG_EDI, U.UC_X86_REG_EBP)),
}


@pytest.mark.parametrize("guest", sorted(ABIS))
@pytest.mark.parametrize("leaf,subleaf", LEAVES)
def test_cpuid_writes_the_policy_values(lab_machine, guest, leaf, subleaf):
    m = lab_machine(guest)
    uc = m.cpu.uc
    (ax, bx, cx, dx), others = ABIS[guest]
    junk = 0xDEAD0000_00000000 if m.is64 else 0
    uc.reg_write(ax, junk | leaf)
    uc.reg_write(cx, junk | subleaf)
    uc.reg_write(bx, 0xFFFFFFFF)
    uc.reg_write(dx, 0xFFFFFFFF)
    before = {r: uc.reg_read(r) for r in others}
    m._emulate_cpuid()
    want = priv.CpuidPolicy()(leaf, subleaf)
    assert tuple(uc.reg_read(r) for r in (ax, bx, cx, dx)) == want
    assert {r: uc.reg_read(r) for r in others} == before


def test_cpuid_uses_the_machines_current_policy(lab_machine):
    """The policy is looked up at each CPUID, so a replaced m.cpuid takes effect."""
    m = lab_machine("hello-pv64")
    m.cpuid = lambda leaf, subleaf: (leaf + 1, subleaf + 2, 0x33, 0xFFFFFFFF)
    m.cpu.uc.reg_write(U.UC_X86_REG_RAX, 0x41)
    m.cpu.uc.reg_write(U.UC_X86_REG_RCX, 0x7)
    m._emulate_cpuid()
    got = tuple(m.cpu.uc.reg_read(r) for r in (U.UC_X86_REG_RAX, U.UC_X86_REG_RBX,
                                               U.UC_X86_REG_RCX, U.UC_X86_REG_RDX))
    assert got == (0x42, 0x9, 0x33, 0xFFFFFFFF)

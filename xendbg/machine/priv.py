"""Emulation of what a PV kernel may not execute itself: CPUID, MSRs, control registers, HLT.

Xen's PV policy, as xendbg implements it (``xen/arch/x86/pv/emul-priv-op.c`` and the CPUID policy):

CPUID (both the forced form ``ud2; .ascii "xen"; cpuid`` and a plain ``cpuid``, which Xen intercepts
with CPUID faulting on current hardware) returns the emulated processor's own values, filtered:

* leaf 1: ECX bit 31 (hypervisor) set; hidden: VMX, SMX, x2APIC, TSC-deadline, XSAVE/OSXSAVE/AVX
  (no ``xsetbv`` emulation), MONITOR, and RDRAND (leaf 7: RDSEED) — random numbers from the host
  would make runs differ, and determinism is a rule. EDX hides VME, DE, PSE, PGE, MTRR, MCE, MCA,
  ACPI, PSE36, HTT and the APIC, as Xen's PV policy does; TSC and PAE are kept (GRUB needs TSC; PV
  needs PAE).
* leaf 7: only the bits a PV guest may use without privileged state: FSGSBASE, SMEP, SMAP,
  INVPCID, PKU and AVX* are hidden.
* leaves 0x40000000–0x40000004: Xen's signature "XenVMMXenVMM", version 4.17, one hypercall page at
  MSR 0x40000000, and the PV time leaf.
* everything else: the emulated processor's values.

MSRs: FS_BASE, GS_BASE and SHADOW_GS_BASE read and write the vCPU's bases (64-bit guests); EFER reads
as Xen shows it; PAT and MISC_ENABLE read fixed values; TSC reads the virtual TSC; writes to PAT
with its fixed value are accepted; the microcode revision (0x8b) reads a fixed revision in bits
63:32 and writes to it are ignored (writing 0 is Intel's documented way to ask for a read);
any other MSR raises #GP in the guest, as a Xen without that MSR
in its policy does (kernels use the ``_safe`` accessors and recover).

Control registers: reads of CR0 (TS from ``fpu_taskswitch``), CR2 (the last page-fault address),
CR3 (the current top-level table) and CR4 (Xen's view); ``clts``; ``mov`` to CR0 that changes only
TS. ``hlt`` blocks the vCPU. ``wbinvd``/``invd`` are accepted and do nothing. ``cli``/``sti`` are no-ops
with virtual IOPL ≥ the guest's ring, else #GP (Xen's "fast and loose" rule). Everything else: #GP.
"""

from __future__ import annotations

from unicorn import UC_ARCH_X86, UC_MODE_64, Uc
from unicorn import x86_const as U

MSR_EFER = 0xC0000080
MSR_FS_BASE = 0xC0000100
MSR_GS_BASE = 0xC0000101
MSR_SHADOW_GS_BASE = 0xC0000102
MSR_TSC = 0x10
MSR_PAT = 0x277
MSR_MISC_ENABLE = 0x1A0
MSR_PLATFORM_ID = 0x17
MSR_UCODE_REV = 0x8B          # Intel's IA32_BIOS_SIGN_ID (AMD's PATCHLEVEL has the same number)
UCODE_REV_VALUE = 0x28 << 32  # "the host's" microcode revision, fixed so that runs repeat
PAT_VALUE = 0x0007040600070406
MISC_ENABLE_VALUE = (1 << 0) | (1 << 11) | (1 << 12)   # fast strings; no BTS; no PEBS

XEN_CPUID_BASE = 0x40000000
XEN_SIGNATURE = (0x566E6558, 0x65584D4D, 0x4D4D566E)   # "XenVMMXenVMM" in EBX, ECX, EDX

_LEAF1_ECX_HIDE = (1 << 3) | (1 << 5) | (1 << 6) | (1 << 21) | (1 << 24) | (1 << 26) | (1 << 27) \
    | (1 << 28) | (1 << 12) | (1 << 29) | (1 << 30)
_LEAF1_EDX_HIDE = (1 << 1) | (1 << 2) | (1 << 3) | (1 << 9) | (1 << 12) | (1 << 13) | (1 << 7) \
    | (1 << 14) | (1 << 17) | (1 << 22) | (1 << 28) | (1 << 29)
_LEAF7_EBX_HIDE = (1 << 0) | (1 << 5) | (1 << 7) | (1 << 10) | (1 << 20) | (1 << 16) | (1 << 17) \
    | (1 << 18) \
    | (1 << 26) | (1 << 27) | (1 << 28) | (1 << 30) | (1 << 31)
_LEAF7_ECX_HIDE = (1 << 3) | (1 << 4)


def _native_cpuid(leaf: int, subleaf: int) -> tuple[int, int, int, int]:
    """What the emulated processor itself answers (a throwaway engine, deterministic)."""
    uc = Uc(UC_ARCH_X86, UC_MODE_64)
    uc.mem_map(0x1000, 0x1000)
    uc.mem_write(0x1000, b"\x0f\xa2")
    uc.reg_write(U.UC_X86_REG_RAX, leaf)
    uc.reg_write(U.UC_X86_REG_RCX, subleaf)
    uc.emu_start(0x1000, 0x1002)
    return tuple(uc.reg_read(r) & 0xFFFFFFFF for r in (U.UC_X86_REG_RAX, U.UC_X86_REG_RBX,
                                                      U.UC_X86_REG_RCX, U.UC_X86_REG_RDX))


class CpuidPolicy:
    def __init__(self, tsc_khz: int = 1_000_000) -> None:
        self._cache: dict[tuple[int, int], tuple[int, int, int, int]] = {}
        self.tsc_khz = tsc_khz

    def __call__(self, leaf: int, subleaf: int) -> tuple[int, int, int, int]:
        leaf &= 0xFFFFFFFF
        subleaf &= 0xFFFFFFFF
        if leaf not in (4, 7, 0xB, 0xD, 0xF, 0x10, 0x12, 0x14, 0x17, 0x18, XEN_CPUID_BASE + 4):
            subleaf = 0
        key = (leaf, subleaf)
        value = self._cache.get(key)
        if value is None:
            value = self._compute(leaf, subleaf)
            self._cache[key] = value
        return value

    def _compute(self, leaf: int, subleaf: int) -> tuple[int, int, int, int]:
        if XEN_CPUID_BASE <= leaf < XEN_CPUID_BASE + 0x100:
            return self._xen_leaf(leaf - XEN_CPUID_BASE, subleaf)
        a, b, c, d = _native_cpuid(leaf, subleaf)
        if leaf == 1:
            c = (c & ~_LEAF1_ECX_HIDE) | (1 << 31)
            d &= ~_LEAF1_EDX_HIDE
            b &= 0x0000FFFF          # one logical processor, APIC id 0
        elif leaf == 7 and subleaf == 0:
            b &= ~_LEAF7_EBX_HIDE
            c &= ~_LEAF7_ECX_HIDE
            d = 0
        elif leaf == 0xD:
            a = b = c = d = 0        # XSAVE is hidden
        return a, b, c, d

    def _xen_leaf(self, index: int, subleaf: int) -> tuple[int, int, int, int]:
        if index == 0:
            return (XEN_CPUID_BASE + 4, *XEN_SIGNATURE)
        if index == 1:
            return (4 << 16 | 17, 0, 0, 0)
        if index == 2:
            return (1, 0x40000000, 0, 0)         # one hypercall page, MSR base
        if index == 3 and subleaf == 0:
            return (0, 0, self.tsc_khz, 0)       # TSC mode "default", rate in kHz
        return (0, 0, 0, 0)

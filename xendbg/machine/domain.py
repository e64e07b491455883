"""A PV domain and its vCPU: the state Xen keeps for a guest, as plain data.

Nothing here runs code; the mechanisms (``hypercalls.py``, ``traps.py``, ``sched.py`` …) read and
change these fields, and the debugger shows them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from xendbg.machine.abi.layout import Abi

INVALID_MFN = (1 << 64) - 1


@dataclass
class TrapInfo:
    """One entry of the guest's virtual IDT (``struct trap_info``)."""

    vector: int
    flags: int          # bits 0-1 DPL, bit 2 "clear event mask on entry"
    cs: int
    address: int


@dataclass
class Callback:
    address: int
    cs: int = 0         # 32-bit ABI only
    flags: int = 0      # CALLBACKF_mask_events


@dataclass
class Vcpu:
    vcpu_id: int = 0
    online: bool = True
    kernel_mode: bool = True            # Xen's TF_kernel_mode (64-bit PV: both modes are ring 3)
    blocked: bool = False
    trap_table: dict[int, TrapInfo] = field(default_factory=dict)
    callbacks: dict[int, Callback] = field(default_factory=dict)
    kernel_ss: int = 0                  # stack_switch
    kernel_sp: int = 0
    gdt_frames: list[int] = field(default_factory=list)   # mfns given to set_gdt
    gdt_entries: int = 0
    ldt_base: int = 0
    ldt_entries: int = 0
    guest_table: int = 0                # mfn of the kernel's top-level page table (cr3)
    guest_table_user: int = 0           # 64-bit: the user-mode L4 (NEW_USER_BASEPTR)
    cr2: int = 0
    debugreg: list[int] = field(default_factory=lambda: [0] * 8)
    fpu_ts: bool = False                # CR0.TS as set by fpu_taskswitch
    fs_base: int = 0
    gs_base_kernel: int = 0
    gs_base_user: int = 0
    iopl: int = 0                       # virtual IOPL (physdev_op set_iopl)
    iobitmap: tuple[int, int] | None = None   # (guest VA, nr_ports) from set_iobitmap
    vcpu_info_ma: int = 0               # machine address of this vCPU's vcpu_info
    faults_in_delivery: int = 0         # nested-fault guard for bounce delivery


@dataclass
class Shutdown:
    reason: int
    name: str
    code: int | None = None


@dataclass
class Domain:
    """The guest domain (one domU, id ``domid``), as Xen sees it."""

    domid: int
    abi: Abi
    nr_pages: int
    max_pages: int
    p2m: np.ndarray                      # pfn → mfn (uint64), INVALID_MFN for holes
    virt_base: int
    vcpus: list[Vcpu]
    shared_info_mfn: int = 0
    start_info_pfn: int = 0
    start_info_va: int = 0
    store_mfn: int = 0
    store_evtchn: int = 0
    console_mfn: int = 0
    console_evtchn: int = 0
    hypercall_page_va: int | None = None
    vm_assist: int = 0                   # bitmask of VMASST_TYPE_*
    shutdown: Shutdown | None = None
    crashed: str | None = None           # why the domain was crashed, if it was
    shutdown_code: int | None = None     # SCHEDOP_shutdown_code
    features_required: frozenset[int] = frozenset()
    pirq_eoi_map_mfn: int = 0            # physdev_op pirq_eoi_gmfn
    pirqs_allocated: set[int] = field(default_factory=set)   # physdev_op get_free_pirq

    @property
    def dying(self) -> bool:
        return self.shutdown is not None or self.crashed is not None

    def pfn_to_mfn(self, pfn: int) -> int:
        if 0 <= pfn < len(self.p2m):
            return int(self.p2m[pfn])
        return INVALID_MFN

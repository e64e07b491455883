"""The PV MMU: page types, pinning, validated page-table updates, p2m/M2P (issue #3).

Modules, each named after the Xen mechanism it implements:

* ``page_types`` — the frame table and Xen's rules (``get_page_type``, ``get_page_from_lNe``,
  ``promote_lN_table``, ``mod_lN_entry``), written up in its docstring;
* ``mmu_update`` — ``do_mmu_update``, ``do_update_va_mapping`` (and ``_otherdomain``);
* ``mmuext`` — ``do_mmuext_op``: pins, base pointers, flushes, LDT, page copy/clear;
* ``ptwr`` — writable page tables: a guest store to a read-only L1 applied as an update;
* ``memory_op`` — ``do_memory_op``: reservations, the E820, the M2P's whereabouts, physmap;
* ``invariants`` — ``check(machine)``: the frame table agrees with the tables that exist;
* ``history`` — what was decided and why, for the debugger.

:class:`Mmu` is what the machine holds (``m.mmu``): it builds the start-of-day state, owns the
operations that involve the vCPU (base pointers, pins) and answers the machine's two calls,
:meth:`Mmu.on_page_fault` and :meth:`Mmu.write_cr3`.
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from xendbg.machine.abi import xen as X
from xendbg.machine.abi.errno import EINVAL
from xendbg.machine.memory import PAGE_SHIFT

from ._validate import F_ALLOCATED, F_PINNED, F_VALIDATED, F_XEN_HEAP, T_L1, T_L4, T_WRITABLE
from .history import History, Rejection
from .page_types import PageTypes, type_name

__all__ = ["Mmu", "Rejection"]

PFEC_USER = 1 << 2           # the #PF error code's "user access" bit


class Mmu:
    """The MMU state of the machine's one PV domain (see the package docstring)."""

    def __init__(self, machine) -> None:
        self.m = machine
        domain = machine.domain
        self.abi = domain.abi
        self.is64 = self.abi.bits == 64
        self.history = History(self._where, machine.emit, lambda: bool(machine.listeners))
        self.pt = PageTypes(machine.memory, domain, machine.xen_area.slots, self.history)
        self.pt.tlb_flush = machine.flush_tlb
        self.pt.validate_segdesc = self._validate_segdesc
        self.pt.on_free = self._on_free
        self.m2p: np.ndarray = machine.layout.m2p
        self.m2p_invalid = (1 << (8 * self.abi.m2p_entry)) - 1
        self.tot_pages = domain.nr_pages
        # References held by other parts of Xen (grant mappings, …): mfn → (refs, type refs).
        self.holds: Counter = Counter()
        self.type_holds: Counter = Counter()
        self._start_of_day()

    def _where(self) -> tuple[int, int]:
        m = self.m
        return m.insns, m.cpu.ip

    # -- start of day ----------------------------------------------------------------------------
    def _start_of_day(self) -> None:
        """What Xen holds once the domain builder is done: every frame of the domain allocated
        (one reference each), shared_info shared writable by Xen, the bootstrap tables validated
        and their top pinned (libxc's ``pin_table``), and vCPU 0's base pointer on that top."""
        m, pt = self.m, self.pt
        d = m.domain
        owned = np.flatnonzero(pt.owner == d.domid)
        pt.count[owned] = 1
        pt.flags[owned] = F_ALLOCATED
        pt.share_xen_page(d.shared_info_mfn, writable=True)
        top = m.layout.pt_base_mfn
        pt.begin()
        rc = self.pin(top, pt.root_type, "start of day: the builder pins the bootstrap tables")
        if rc == 0:
            rc = pt.get_page_and_type(top, pt.root_type, "start of day: vCPU 0's base pointer")
        if rc:
            why = pt.why.text() if pt.why else str(rc)
            raise RuntimeError(f"the bootstrap page tables do not validate: {why}")
        m.vcpu.guest_table = top

    # -- shared helpers for the hypercall modules ----------------------------------------------------
    def reject(self, op: str, rc: int, rule: str | None = None) -> None:
        """Record a refused operation with the reason the rules gave (or ``rule``)."""
        why = self.pt.why
        if why is None or why.error != rc:
            why = Rejection(rule or (why.rule if why else "refused"), rc,
                            *((why.mfn, why.index, why.old, why.new) if why else ()))
        self.history.reject(Rejection(why.rule, why.error, why.mfn, why.index, why.old,
                                      why.new, op))
        self.pt.why = None

    def set_m2p(self, mfn: int, pfn: int) -> None:
        self.m2p[mfn] = pfn & self.m2p_invalid

    def _on_free(self, mfn: int) -> None:
        self.tot_pages -= 1

    def _validate_segdesc(self, mfn: int) -> bool:
        from xendbg.machine.descriptor_tables import check_descriptor_page
        return check_descriptor_page(self.m.memory, mfn, self.abi.bits)

    # -- pins ------------------------------------------------------------------------------------
    def pin(self, mfn: int, t: int, why: str) -> int:
        """MMUEXT_PIN_Ln_TABLE: hold ``mfn`` validated as type ``t`` until unpinned."""
        pt = self.pt
        if not pt.get_page(mfn):
            return pt.refuse(-EINVAL, "cannot pin: " + pt.not_ours(mfn), mfn)
        rc = pt.get_page_type(mfn, t, why)
        if rc:
            pt.put_page(mfn)
            return rc
        if pt.flags[mfn] & F_PINNED:
            pt.put_page_and_type(mfn)
            return pt.refuse(-EINVAL, f"mfn {mfn:#x} is already pinned (pins do not nest)", mfn)
        pt.flags[mfn] |= F_PINNED
        self.history.pin(mfn, type_name(t), why)
        return 0

    def unpin(self, mfn: int, why: str = "MMUEXT_UNPIN_TABLE") -> int:
        pt = self.pt
        if not pt.get_page(mfn):
            return pt.refuse(-EINVAL, "cannot unpin: " + pt.not_ours(mfn), mfn)
        if not pt.flags[mfn] & F_PINNED:
            pt.put_page(mfn)
            return pt.refuse(-EINVAL, f"mfn {mfn:#x} is not pinned", mfn)
        pt.flags[mfn] &= 0xFF ^ F_PINNED
        self.history.unpin(mfn, type_name(int(pt.type[mfn])), why)
        pt.put_page_and_type(mfn)
        pt.put_page(mfn)
        return 0

    # -- base pointers -----------------------------------------------------------------------------
    def load_cr3(self) -> None:
        """The CPU walks the table of the vCPU's current mode (Xen's ``update_cr3``)."""
        v = self.m.vcpu
        mfn = v.guest_table if v.kernel_mode or not self.is64 else v.guest_table_user
        self.m.cpu.cr3 = mfn << PAGE_SHIFT

    def _m2p_strict(self) -> bool:
        return bool(self.m.domain.vm_assist >> X.VMASST_TYPE_m2p_strict & 1)

    def new_guest_cr3(self, mfn: int) -> int:
        """MMUEXT_NEW_BASEPTR (and ``mov %reg, %cr3``): switch the kernel's top-level table."""
        pt = self.pt
        v = self.m.vcpu
        old = v.guest_table
        if mfn == old:
            self.load_cr3()
            return 0
        rc = pt.get_page_and_type(mfn, pt.root_type, "new base pointer")
        if rc:
            return rc
        if self.is64 and not self._m2p_strict():
            table = pt.table(mfn)
            if not int(table[pt.m2p_slot]):          # fill_ro_mpt
                table[pt.m2p_slot] = pt.xen_slots.get(pt.m2p_slot, 0)
        v.guest_table = mfn
        self.load_cr3()
        if old:
            pt.put_page_and_type(old)
        return 0

    def new_user_baseptr(self, mfn: int) -> int:
        """MMUEXT_NEW_USER_BASEPTR (64-bit): the L4 used while the guest runs in user mode."""
        pt = self.pt
        v = self.m.vcpu
        old = v.guest_table_user
        if mfn == old:
            return 0
        if mfn:
            rc = pt.get_page_and_type(mfn, T_L4, "new user base pointer")
            if rc:
                return rc
            if self._m2p_strict():
                pt.table(mfn)[pt.m2p_slot] = 0        # zap_ro_mpt
        v.guest_table_user = mfn
        if old:
            pt.put_page_and_type(old)
        return 0

    # -- the machine's calls -----------------------------------------------------------------------
    def on_page_fault(self, vcpu, cr2: int, error_code: int) -> bool:
        """A #PF arrived: True if Xen handled it itself (a writable-page-table write was applied),
        False to bounce it to the guest with this error code and CR2."""
        from .ptwr import ptwr_do_page_fault
        return ptwr_do_page_fault(self.m, vcpu, cr2, error_code)

    def guest_error_code(self, vcpu, error_code: int) -> int:
        """The #PF error code the guest sees. A 64-bit PV kernel runs in ring 3, so the CPU
        reports every fault as a user access; Xen re-sets the U bit from the vCPU's mode (guest
        kernel: 0, guest user: 1) before bouncing (``pv_inject_event``)."""
        if self.is64:
            return error_code & ~PFEC_USER | (0 if vcpu.kernel_mode else PFEC_USER)
        return error_code

    def write_cr3(self, vcpu, cr3: int) -> bool:
        """``mov %reg, %cr3`` from the guest kernel: as NEW_BASEPTR; False → #GP."""
        if self.is64 and not vcpu.kernel_mode:
            return False
        pt = self.pt
        pt.begin()
        mfn = self.abi.cr3_to_mfn(cr3)
        if not pt.get_page(mfn):
            pt.refuse(-EINVAL, "mov to cr3: " + pt.not_ours(mfn), mfn)
            self.reject("mov to cr3", -EINVAL)
            return False
        rc = self.new_guest_cr3(mfn)
        pt.put_page(mfn)
        if rc:
            self.reject("mov to cr3", rc)
            return False
        return True

    # -- frames for other parts of Xen -----------------------------------------------------------
    def alloc_pages(self, order: int = 0, max_mfn: int | None = None) -> int | None:
        """The lowest free, naturally aligned run of ``1 << order`` frames (owner DOMID_INVALID,
        below ``max_mfn``), or None. The frames are not assigned: see :meth:`assign_pages`."""
        owner = self.pt.owner
        size = 1 << order
        limit = len(owner) if max_mfn is None else min(len(owner), max_mfn)
        limit -= limit % size
        if limit <= 0:
            return None
        free = (owner[:limit] == X.DOMID_INVALID).reshape(-1, size).all(axis=1)
        hits = np.flatnonzero(free)
        return int(hits[0]) * size if len(hits) else None

    def assign_pages(self, mfn: int, order: int) -> None:
        """Give ``1 << order`` free frames from ``mfn`` to the domain, scrubbed, one reference each
        (Xen's ``assign_pages``)."""
        pt = self.pt
        for f in range(mfn, mfn + (1 << order)):
            pt.owner[f] = pt.domid
            pt.count[f] = 1
            pt.flags[f] = F_ALLOCATED
            pt.type[f] = 0
            pt.type_count[f] = 0
            pt.linear[f] = 0
            self.m.memory.clear_frame(f)
        self.tot_pages += 1 << order
        self.m.cpu.flush_tb()          # the frames may have held code that was translated

    def share_xen_page_with_guest(self, mfn: int, writable: bool = True) -> None:
        """Make a Xen frame (e.g. a grant-table frame) the guest's, mappable as Xen's
        ``share_xen_page_with_guest`` allows: it keeps a permanent writable (or none) type."""
        self.pt.share_xen_page(mfn, writable)

    def hold(self, mfn: int, writable: bool = False) -> bool:
        """Another part of Xen takes a reference (and a writable type reference) on a frame of
        the domain; the invariant checker counts it. False if the rules refuse."""
        pt = self.pt
        if not pt.get_page(mfn):
            return False
        if writable and pt.get_page_type(mfn, T_WRITABLE, "held writable by Xen"):
            pt.put_page(mfn)
            return False
        self.holds[mfn] += 1
        if writable:
            self.type_holds[mfn] += 1
        return True

    def release(self, mfn: int, writable: bool = False) -> None:
        self.holds[mfn] -= 1
        if writable:
            self.type_holds[mfn] -= 1
            self.pt.put_page_type(mfn)
        self.pt.put_page(mfn)

    # -- inspection ------------------------------------------------------------------------------
    def frame_info(self, mfn: int) -> dict:
        """Everything the frame table says about ``mfn`` (for the debugger's panels)."""
        pt = self.pt
        flags = int(pt.flags[mfn])
        pfn = int(self.m2p[mfn])
        pinned = self.history.pinned_by.get(mfn)
        return {
            "mfn": mfn, "owner": int(pt.owner[mfn]), "pfn": None if pfn == self.m2p_invalid
            else pfn, "count": int(pt.count[mfn]), "type": type_name(int(pt.type[mfn])),
            "type_count": int(pt.type_count[mfn]), "validated": bool(flags & F_VALIDATED),
            "pinned": bool(flags & F_PINNED), "allocated": bool(flags & F_ALLOCATED),
            "xen_heap": bool(flags & F_XEN_HEAP), "linear": int(pt.linear[mfn]),
            "pinned_by": None if pinned is None else
            f"insn {pinned.insns} at {pinned.ip:#x}: {pinned.why}",
        }

    def tables(self) -> dict[str, list[int]]:
        """The frames in use as page tables now, by type name."""
        pt = self.pt
        out: dict[str, list[int]] = {}
        used = np.flatnonzero((pt.type_count > 0) & ((pt.type & 0xF) >= T_L1)
                              & ((pt.type & 0xF) <= T_L4))
        for mfn in used.tolist():
            out.setdefault(type_name(int(pt.type[mfn])), []).append(mfn)
        return out

    def pfn_of(self, mfn: int) -> int | None:
        pfn = int(self.m2p[mfn])
        return None if pfn == self.m2p_invalid else pfn

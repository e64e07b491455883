"""Page types: the rules that make direct paging safe, and the one place that enforces them.

A PV guest's page tables hold *machine* addresses and the CPU walks them directly, so Xen must make
sure that no table the CPU may walk ever lets the guest reach memory it does not own, or write a
table behind Xen's back. Xen does it with two counts per machine frame (Xen's ``mm.c`` essay):

* **count** (Xen's ``count_info``) counts every use of the frame: one while the frame is
  *allocated* to the domain, one per present page-table entry that maps it, one per pin, one per
  base pointer (cr3) or GDT slot that names it. A frame goes back to the free pool only when its
  count drops to 0, so a domain can never give away a frame it still maps.

* **type** and **type count**: a frame may be used in *one* of these ways at a time: as an L1, L2,
  L3 or L4 page table, as a segment-descriptor (GDT/LDT) page, or mapped writable by the guest
  (the PAE variant "L2 that holds Xen's slots" is a type of its own). The type count counts the
  references of the current type, and **a frame can change its type only when its type count is
  zero**. Hence a frame that is a page table (or a GDT page) somewhere can never be mapped
  writable anywhere, and a frame mapped writable can never become a page table.

Taking a type reference on a frame whose type count is 0 with a new type re-*validates* it:
every present entry of a new L*n* table must be acceptable (:func:`get_page_from_lNe`), which
takes the references that entry holds, recursively down the tree (``promote_lN_table``). Dropping
the last type reference of a page table *devalidates* it: its entries drop their references
(``demote_lN_table``). A frame's type and validity outlive its last reference; only its next use
with another type changes them.

An entry is acceptable when (``get_page_from_l1e`` … ``get_page_from_l4e``):

* it sets no disallowed bit: for a PV domU only P, RW, US, A, D, the available bits and NX (and G
  in an L1); in particular no superpage (PSE) and no cache attributes. The 32-bit PAE top level
  follows Xen's compat mask: P, RW, US, A, D and the available bits 9-11, nothing else (no
  PWT/PCD, no bits 52-63); and since xendbg runs 32-bit guests on a real PAE MMU, bits 52-62 are
  reserved at every 32-bit level (Xen's compat mode allows them below the L3);
* it maps a frame of this domain (an L1 entry may name another owner only through a grant
  mapping: Xen's own frames, the M2P included, are readable only through Xen's own slots);
* an L1 entry mapping a frame writable takes a *writable* type reference on it; an L*n* entry
  (n > 1) takes an L*(n-1)* type reference on the table it names;
* a *linear* (recursive) entry, naming a table of its own level instead of the next one, is
  accepted only read-only, only for already-validated tables, not from a table that is itself
  mapped linearly elsewhere, and not to a table that holds linear entries; a table mapping itself
  takes no reference at all. Not at the 32-bit L3.

Xen's own slots are not the guest's: L4 slots 256-271 of a 64-bit guest, and for a 32-bit guest
the entries from ``HYPERVISOR_COMPAT_VIRT_START`` up in the L2 that maps the top GiB (which must
be the L2 in the L3's slot 3, of the distinct type "PAE Xen L2", and not shared with another L3).
Validation skips them and then writes Xen's entries there; guest updates to them are refused, as
are updates to a 32-bit L3's slot 3.

Pinning takes a type reference (and a count) that holds a table's validation while nothing else
uses it; each frame can be pinned once. Updates go through ``mod_lN_entry``: only entries of
validated tables are updated as tables (a frame not in use as a table is written as plain data
after taking a writable type), and an update that changes only the "harmless" bits (A, D, US, G,
NX, available) of a present entry is written without revalidation (Xen's fast path).

Every refusal records *why* (a :class:`~xendbg.machine.mmu.history.Rejection`); every type change
is recorded in the history. All per-frame state lives in numpy arrays indexed by mfn.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from xendbg.machine.abi import xen as X
from xendbg.machine.abi.errno import EBUSY, EINVAL, EPERM
from xendbg.machine.memory import MachineMemory

from ._validate import BAD_FLAGS as R_BAD_FLAGS
from ._validate import (
    F_ALLOCATED,
    F_VALIDATED,
    F_XEN_HEAP,
    T_L1,
    T_L2,
    T_L3,
    T_L4,
    T_NONE,
    T_PAE_XEN_L2,
    T_SEG_DESC,
    T_WRITABLE,
    devalidate_l1,
    validate_l1,
)
from ._validate import INVALID_MFN as R_INVALID_MFN
from ._validate import NO_SUCH_FRAME as R_NO_SUCH_FRAME
from ._validate import NOT_OWNER as R_NOT_OWNER
from .history import History, Rejection

_P, _RW, _US, _PWT, _PCD, _A, _D, _PSE, _G = 1, 2, 4, 8, 0x10, 0x20, 0x40, 0x80, 0x100
_AVAIL = 0xE00
_AVAIL_HIGH = 0x7FF << 52
_NX = 1 << 63
ADDR_MASK = 0x000FFFFFFFFFF000
FLAG_BITS = ((1 << 64) - 1) & ~ADDR_MASK
_BASE_ALLOWED = _P | _RW | _US | _A | _D | _AVAIL | _AVAIL_HIGH | _NX
# Bits a present entry may change without revalidation (Xen's FASTPATH_FLAG_WHITELIST).
_FASTPATH = _NX | _AVAIL_HIGH | _AVAIL | _G | _D | _A | _US
_REVALIDATE = ADDR_MASK | (FLAG_BITS & ~_FASTPATH)

XEN_L4_FIRST, XEN_L4_LAST = 256, 271          # ROOT_PAGETABLE_{FIRST,LAST}_XEN_SLOT
TABLE_TYPES = (T_L1, T_L2, T_L3, T_L4)
TYPE_NAMES = {T_NONE: "none", T_L1: "L1", T_L2: "L2", T_L3: "L3", T_L4: "L4",
              T_SEG_DESC: "seg_desc", T_WRITABLE: "writable", T_L2 | T_PAE_XEN_L2: "L2(pae_xen)"}


def type_name(t: int) -> str:
    return TYPE_NAMES.get(t, f"type {t:#x}")


def entry_mfn(entry: int) -> int:
    return (entry & ADDR_MASK) >> 12


class PageTypes:
    """The frame table of one domain and Xen's rules over it (see the module docstring)."""

    def __init__(self, memory: MachineMemory, domain, xen_slots: dict[int, int],
                 history: History) -> None:
        abi = domain.abi
        n = memory.nr_frames
        self.memory = memory
        self.domain = domain
        self.domid = domain.domid
        self.is64 = abi.bits == 64
        self.levels = abi.page_levels
        self.root_type = T_L4 if self.is64 else T_L3
        self.history = history
        self.tlb_flush: Callable[[], None] | None = None   # set by the machine's Mmu
        self.xen_slots = dict(xen_slots)
        # The frame table (DESIGN: arrays, not objects; the panels and the fast path read them).
        self.owner = memory.owner
        self.count = np.zeros(n, np.int32)
        self.type = np.zeros(n, np.uint8)
        self.type_count = np.zeros(n, np.int32)
        self.flags = np.zeros(n, np.uint8)
        self.linear = np.zeros(n, np.int16)       # >0: holds linear entries; <0: used linearly
        self.user_bit = _US if self.is64 else 0   # adjust_guest_lNe: 64-bit kernels run in ring 3
        high = 0 if self.is64 else _AVAIL_HIGH    # reserved on a real PAE MMU
        self.l1_disallow = FLAG_BITS & ~(_BASE_ALLOWED | _G) | high
        self.l2_disallow = FLAG_BITS & ~_BASE_ALLOWED | high
        # A 32-bit guest's L3 follows Xen's compat rule (``l3_disallow_mask``: 0xFFFFF198 in
        # Xen's packed flags), not the PAE PDPTE format: RW, US, A and D are allowed (a 64-bit
        # Xen runs the L3 in long mode and adds RW|US itself; GRUB's i386 tables set RW), while
        # PWT, PCD, PSE, G and bits 52-63 are refused. Unicorn's PAE walk ignores RW/US/A/D in
        # a PDPTE (it checks only P, reserved high bits and NX), so the CPU sees the same tree.
        self.l3_disallow = (FLAG_BITS & ~_BASE_ALLOWED) if self.is64 else \
            _PWT | _PCD | _PSE | _G | (0xFFF << 52)
        self.l4_disallow = FLAG_BITS & ~_BASE_ALLOWED
        self.xen_l2_first = (abi.hypervisor_start >> 21) & 511       # 32-bit: first Xen L2 slot
        self.m2p_slot = (abi.m2p_start >> 39) & 511                   # 64-bit: the RO M2P's slot
        self.why: Rejection | None = None
        self.validate_segdesc: Callable[[int], bool] = lambda mfn: True
        self.on_free: Callable[[int], None] = lambda mfn: None
        self._changed = np.zeros((2, 512), np.int64)
        self._zeroed = np.zeros(512, np.int64)
        self._one = np.zeros(1, "<u8")

    # -- bookkeeping ---------------------------------------------------------------------------
    def table(self, mfn: int) -> np.ndarray:
        return self.memory.frame_u64(mfn)

    def begin(self) -> None:
        """Start an operation: forget the reason of the previous refusal."""
        self.why = None

    def refuse(self, error: int, rule: str, mfn: int | None = None, index: int | None = None,
                old: int | None = None, new: int | None = None) -> int:
        """Refuse with ``error``; the first (innermost) reason of an operation is the one kept."""
        if self.why is None:
            self.why = Rejection(rule, error, mfn, index, old, new)
        return error

    def _retype(self, mfn: int, new: int, why: str) -> None:
        old = int(self.type[mfn])
        if old != new:
            self.type[mfn] = new
            self.history.type_change(mfn, type_name(old), type_name(new), why)

    def _record_l1_changes(self, nchanged: int, via: str) -> None:
        if nchanged:
            codes = self._changed[1, :nchanged].tolist()
            names = {t: type_name(t) for t in set(codes)}
            olds = [names[t] for t in codes]
            self.history.type_changes(self._changed[0, :nchanged].tolist(), olds, "writable", via)

    def valid_table(self, mfn: int, t: int | None = None) -> bool:
        """Xen's ``page_lock`` condition: a validated frame in use (of type ``t``, if given)."""
        return (0 <= mfn < len(self.count) and self.type_count[mfn] > 0
                and bool(self.flags[mfn] & F_VALIDATED)
                and (t is None or int(self.type[mfn]) == t))

    # -- references: get_page / put_page ---------------------------------------------------------
    def get_page(self, mfn: int, d: int | None = None) -> bool:
        """Take a reference on an allocated frame owned by domain ``d`` (default: this one)."""
        d = self.domid if d is None else d
        if not 0 <= mfn < len(self.count) or int(self.owner[mfn]) != d or self.count[mfn] <= 0:
            return False
        self.count[mfn] += 1
        return True

    def put_page(self, mfn: int) -> None:
        self.count[mfn] -= 1
        if self.count[mfn] == 0:
            self.free_page(mfn, "last reference dropped")

    def free_page(self, mfn: int, why: str) -> None:
        if self.type_count[mfn]:
            raise AssertionError(f"mfn {mfn:#x} freed with {self.type_count[mfn]} type references")
        self.owner[mfn] = X.DOMID_INVALID
        self.type[mfn] = T_NONE
        self.flags[mfn] = 0
        self.linear[mfn] = 0
        self.history.free(mfn, why)
        self.on_free(mfn)

    def share_xen_page(self, mfn: int, writable: bool) -> None:
        """Xen's ``share_xen_page_with_guest``: a Xen page the guest may map (shared_info, grant
        frames). It is allocated to the domain and holds a permanent type reference, writable or
        none, so it can never become a page table."""
        self.owner[mfn] = self.domid
        self.count[mfn] = 1
        self.flags[mfn] = F_ALLOCATED | F_XEN_HEAP | F_VALIDATED
        self._retype(mfn, T_WRITABLE if writable else T_NONE, "shared by Xen with the guest")
        self.type_count[mfn] = 1

    # -- types: get_page_type / put_page_type ----------------------------------------------------
    def get_page_type(self, mfn: int, t: int, via: str) -> int:
        tc = int(self.type_count[mfn])
        if tc == 0:
            if int(self.type[mfn]) != t:
                if int(self.type[mfn]) == T_WRITABLE and self.tlb_flush is not None:
                    # The last writable mapping is gone from the tables, but the CPU may still
                    # hold it in its TLB: a guest store through it would bypass validation.
                    # Xen flushes here too (the page's tlbflush_timestamp check).
                    self.tlb_flush()
                self._retype(mfn, t, via)
                self.flags[mfn] &= 0xFF ^ F_VALIDATED
            self.type_count[mfn] = 1
            if t == T_WRITABLE:
                self.flags[mfn] |= F_VALIDATED
            if self.flags[mfn] & F_VALIDATED:
                return 0
            self.linear[mfn] = 0
            rc = self._validate(mfn, t)
            if rc:
                self.type_count[mfn] = 0
                self._retype(mfn, T_NONE, f"validation as {type_name(t)} failed")
                return rc
            self.flags[mfn] |= F_VALIDATED
            return 0
        cur = int(self.type[mfn])
        if cur != t:
            return self.refuse(-EINVAL, f"the frame is in use as {type_name(cur)} ({tc} type "
                               f"references), so it cannot be used as {type_name(t)}", mfn)
        if not self.flags[mfn] & F_VALIDATED:
            return self.refuse(-EINVAL, f"the frame is still being validated as {type_name(t)} "
                               "(a table that contains itself)", mfn)
        self.type_count[mfn] += 1
        return 0

    def put_page_type(self, mfn: int, ptpg: int | None = None) -> None:
        """Drop a type reference; the last one of a table devalidates it. ``ptpg`` is the table
        whose entry held the reference (for the linear-page-table counts)."""
        tc = int(self.type_count[mfn])
        if tc <= 0:
            raise AssertionError(f"type count of mfn {mfn:#x} would go negative")
        t = int(self.type[mfn])
        linear = ptpg is not None and (t & 0xF) == (int(self.type[ptpg]) & 0xF)
        if tc == 1 and (t & 0xF) in TABLE_TYPES and self.flags[mfn] & F_VALIDATED:
            self.flags[mfn] &= 0xFF ^ F_VALIDATED
            self._devalidate(mfn, t)
            if t & T_PAE_XEN_L2:
                self._retype(mfn, T_L2, "devalidated: no longer holds Xen's slots")
        if linear:
            self.linear[mfn] += 1          # dec_linear_uses
            self.linear[ptpg] -= 1         # dec_linear_entries
        self.type_count[mfn] = tc - 1

    def get_page_and_type(self, mfn: int, t: int, via: str, d: int | None = None) -> int:
        if not self.get_page(mfn, d):
            return self.refuse(-EINVAL, self.not_ours(mfn, d), mfn)
        rc = self.get_page_type(mfn, t, via)
        if rc:
            self.put_page(mfn)
        return rc

    def put_page_and_type(self, mfn: int, ptpg: int | None = None) -> None:
        self.put_page_type(mfn, ptpg)
        self.put_page(mfn)

    def not_ours(self, mfn: int, d: int | None = None) -> str:
        d = self.domid if d is None else d
        if not 0 <= mfn < len(self.count):
            return f"mfn {mfn:#x} is not a frame of this machine"
        owner = int(self.owner[mfn])
        if owner == X.DOMID_INVALID:
            return f"mfn {mfn:#x} is free, not a frame of d{d}"
        if owner == X.DOMID_XEN:
            return f"mfn {mfn:#x} belongs to Xen, not to d{d}"
        if owner == d:
            return (f"mfn {mfn:#x} is marked as d{d}'s but was never given to it through the "
                    "frame table (no reference)")
        return f"mfn {mfn:#x} belongs to d{owner}, not to d{d}"

    def _validate(self, mfn: int, t: int) -> int:
        level = t & 0xF
        if level == T_L1:
            return self.promote_l1_table(mfn)
        if level == T_L2:
            return self.promote_l2_table(mfn, t)
        if level == T_L3:
            return self.promote_l3_table(mfn)
        if level == T_L4:
            return self.promote_l4_table(mfn)
        if t == T_SEG_DESC:
            if self.validate_segdesc(mfn):
                return 0
            return self.refuse(-EINVAL, "the frame holds a descriptor Xen does not accept "
                               "(see check_descriptor)", mfn)
        raise AssertionError(f"no validation for type {t}")

    def _devalidate(self, mfn: int, t: int) -> None:
        level = t & 0xF
        if level == T_L1:
            self.demote_l1_table(mfn)
        else:
            self._demote_upper(mfn, t)

    # -- L1 entries --------------------------------------------------------------------------------
    def get_page_from_l1e(self, entry: int, l1mfn: int, index: int,
                          pg_owner: int | None = None) -> tuple[int, int]:
        """References for one new L1 entry: (0 or -errno, the entry as Xen writes it)."""
        if not entry & _P:
            return 0, entry
        one = self._one
        one[0] = entry
        reason, _i, nch = validate_l1(one, self.domid if pg_owner is None else pg_owner,
                                      self.l1_disallow, self.user_bit, self.owner, self.count,
                                      self.type, self.type_count, self.flags, self._changed)
        self._record_l1_changes(nch, f"mapped writable by L1 mfn {l1mfn:#x}[{index}]")
        if reason:
            return self._l1_refusal(reason, entry, l1mfn, index, pg_owner), entry
        return 0, int(one[0])

    def _l1_refusal(self, reason: int, entry: int, l1mfn: int, index: int,
                    pg_owner: int | None = None) -> int:
        mfn = entry_mfn(entry)
        where = {"mfn": l1mfn, "index": index, "new": entry}
        if reason == R_BAD_FLAGS:
            bad = entry & self.l1_disallow
            return self.refuse(-EINVAL, f"L1 entry sets disallowed bits {bad:#x} (reserved bits, "
                               "cache attributes and PAT are not allowed to a PV domU)", **where)
        if reason == R_INVALID_MFN:
            return self.refuse(-EINVAL, "L1 entry names INVALID_MFN", **where)
        if reason == R_NO_SUCH_FRAME:
            return self.refuse(-EPERM, f"L1 entry maps mfn {mfn:#x}, beyond machine memory: this "
                               "domain may not map MMIO", **where)
        if reason == R_NOT_OWNER:
            return self.refuse(-EBUSY, "L1 entry maps a frame the domain does not own: "
                               + self.not_ours(mfn, pg_owner), **where)
        return self.refuse(-EBUSY, f"L1 entry maps mfn {mfn:#x} writable, but that frame is in "
                           f"use as {type_name(int(self.type[mfn]))} "
                           f"({int(self.type_count[mfn])} type references)", **where)

    def put_page_from_l1e(self, entry: int) -> None:
        if not entry & _P:
            return
        self._one[0] = entry
        self._put_l1_refs(self._one)

    def _put_l1_refs(self, entries: np.ndarray) -> None:
        zeroed = self._zeroed
        for mfn in zeroed[:devalidate_l1(entries, self.count, self.type_count, zeroed)].tolist():
            self.free_page(mfn, "last mapping dropped")

    def promote_l1_table(self, mfn: int) -> int:
        table = self.table(mfn)
        reason, index, nch = validate_l1(table, self.domid, self.l1_disallow, self.user_bit,
                                         self.owner, self.count, self.type, self.type_count,
                                         self.flags, self._changed)
        self._record_l1_changes(nch, f"mapped writable by L1 mfn {mfn:#x}")
        if reason:
            entry = int(table[index])
            rc = self._l1_refusal(reason, entry, mfn, index)
            self._put_l1_refs(table[:index])       # promote_l1_table's tear-down
            return rc
        return 0

    def demote_l1_table(self, mfn: int) -> None:
        self._put_l1_refs(self.table(mfn))

    # -- L2/L3/L4 entries --------------------------------------------------------------------------
    def _upper(self, level: int, entry: int, ptmfn: int, index: int) -> int:
        """get_page_from_l{level}e: the next level's type on the named table, or a linear entry."""
        disallow = {2: self.l2_disallow, 3: self.l3_disallow, 4: self.l4_disallow}[level]
        if entry & disallow:
            what = "superpages (PSE) are not allowed" if entry & _PSE else \
                "reserved bits or cache attributes"
            return self.refuse(-EINVAL, f"L{level} entry sets disallowed bits "
                               f"{entry & disallow:#x}: {what}", ptmfn, index, new=entry)
        mfn = entry_mfn(entry)
        saved = self.why
        rc = self.get_page_and_type(mfn, level - 1, f"referenced by L{level} mfn "
                                                    f"{ptmfn:#x}[{index}]")
        if rc == -EINVAL and (level != 3 or self.is64):
            linear = self._get_linear(level, entry, ptmfn)
            if linear is None:
                self.why = saved
                return 0
            if 0 <= mfn < len(self.type) and int(self.type[mfn]) & 0xF == level:
                self.why = saved                    # the linear rule is the relevant one
                self.refuse(-EINVAL, f"linear page table: {linear}", ptmfn, index, new=entry)
        elif rc and self.why is not None and self.why.index is None and self.why.mfn == mfn:
            # Say which entry asked for it.
            w = self.why
            self.why = Rejection(f"L{level} entry: {w.rule}", w.error, ptmfn, index, None, entry)
        return rc

    def _get_linear(self, level: int, entry: int, ptmfn: int) -> str | None:
        """Xen's ``get_lN_linear_pagetable``: None if ``entry`` is an acceptable linear entry
        (its references taken), else why not."""
        if entry & _RW:
            return "a linear (recursive) entry must be read-only"
        mfn = entry_mfn(entry)
        if mfn == ptmfn:
            return None                            # a table mapping itself holds no reference
        if int(self.owner[ptmfn]) != self.domid or not self.get_page(mfn):
            return "the mapped table is not this domain's"
        if self.linear[ptmfn] < 0:
            self.put_page(mfn)
            return "the table is itself mapped linearly elsewhere"
        if self.linear[mfn] > 0:
            self.put_page(mfn)
            return "the mapped table holds linear entries itself"
        if int(self.type[mfn]) & 0xF != level or not self.flags[mfn] & F_VALIDATED \
                or not self.type_count[mfn]:
            self.put_page(mfn)
            return f"the mapped frame is not a validated L{level} table"
        self.linear[ptmfn] += 1
        self.linear[mfn] -= 1
        self.type_count[mfn] += 1
        return None

    def put_page_from_upper(self, entry: int, ptmfn: int) -> None:
        """put_page_from_l{2,3,4}e."""
        if not entry & _P:
            return
        mfn = entry_mfn(entry)
        if mfn == ptmfn:
            return
        self.put_page_and_type(mfn, ptpg=ptmfn)

    def _is_guest_slot(self, t: int, index: int) -> bool:
        """False for the entries that are Xen's (skipped by validation, refused to updates)."""
        level = t & 0xF
        if level == T_L4:
            return not XEN_L4_FIRST <= index <= XEN_L4_LAST
        if t == T_L2 | T_PAE_XEN_L2:
            return index < self.xen_l2_first
        if level == T_L3 and not self.is64:
            return index < 4
        return True

    def _present_guest_entries(self, mfn: int, t: int) -> list[int]:
        table = self.table(mfn)
        return [i for i in np.flatnonzero(table & np.uint64(_P)).tolist()
                if self._is_guest_slot(t, i)]

    def _promote_entries(self, mfn: int, t: int) -> int:
        table = self.table(mfn)
        level = t & 0xF
        done: list[int] = []
        for i in self._present_guest_entries(mfn, t):
            entry = int(table[i])
            if level == 3 and not self.is64 and i == 3:
                rc = self._pae_slot3(mfn, entry)
            else:
                rc = self._upper(level, entry, mfn, i)
            if rc:
                for j in reversed(done):
                    self.put_page_from_upper(int(table[j]), mfn)
                return rc
            done.append(i)
        if self.user_bit and done:
            table[done] |= np.uint64(self.user_bit)
        return 0

    def promote_l2_table(self, mfn: int, t: int) -> int:
        rc = self._promote_entries(mfn, t)
        if not rc and t & T_PAE_XEN_L2:
            self.install_xen_l2_slots(mfn)
        return rc

    def promote_l3_table(self, mfn: int) -> int:
        table = self.table(mfn)
        if not self.is64:
            table[4:] = 0       # only 4 PDPTEs exist; the rest of the page must not matter
            if not int(table[3]) & _P:
                return self.refuse(-EINVAL, "PAE L3 slot 3 must map the L2 that holds Xen's "
                                   "mappings", mfn, 3, new=int(table[3]))
        return self._promote_entries(mfn, T_L3)

    def _pae_slot3(self, l3mfn: int, entry: int) -> int:
        if entry & self.l3_disallow:
            return self.refuse(-EINVAL, f"PAE L3 entry sets disallowed bits "
                               f"{entry & self.l3_disallow:#x}", l3mfn, 3, new=entry)
        mfn = entry_mfn(entry)
        rc = self.get_page_and_type(mfn, T_L2 | T_PAE_XEN_L2, f"L2 with Xen's slots under L3 "
                                                               f"mfn {l3mfn:#x}")
        if rc:
            return rc
        if self.type_count[mfn] != 1:
            self.put_page_and_type(mfn, ptpg=l3mfn)
            return self.refuse(-EINVAL, "the L2 under PAE L3 slot 3 holds Xen's mappings and may "
                               "not be shared by several L3 tables", l3mfn, 3, new=entry)
        return 0

    def promote_l4_table(self, mfn: int) -> int:
        rc = self._promote_entries(mfn, T_L4)
        if not rc:
            strict = bool(self.domain.vm_assist >> X.VMASST_TYPE_m2p_strict & 1)
            self.install_xen_l4_slots(mfn, ro_mpt=not strict)
        return rc

    def _demote_upper(self, mfn: int, t: int) -> None:
        table = self.table(mfn)
        for i in reversed(self._present_guest_entries(mfn, t)):
            self.put_page_from_upper(int(table[i]), mfn)

    # -- Xen's slots -------------------------------------------------------------------------------
    def install_xen_l4_slots(self, mfn: int, ro_mpt: bool = True) -> None:
        """init_xen_l4_slots: every one of Xen's slots, clobbering what the guest left there."""
        table = self.table(mfn)
        table[XEN_L4_FIRST:XEN_L4_LAST + 1] = 0
        for slot, entry in self.xen_slots.items():
            if slot != self.m2p_slot or ro_mpt:
                table[slot] = entry

    def install_xen_l2_slots(self, mfn: int) -> None:
        table = self.table(mfn)
        table[self.xen_l2_first:] = 0
        for index, entry in self.xen_slots.items():
            table[index] = entry

    # -- updates: mod_lN_entry ---------------------------------------------------------------------
    @staticmethod
    def _write(table: np.ndarray, index: int, old: int, new: int, preserve_ad: bool) -> None:
        if preserve_ad:
            new |= old & (_A | _D)
        table[index] = new

    def mod_l1_entry(self, mfn: int, index: int, new: int, preserve_ad: bool,
                     pg_owner: int | None = None) -> int:
        table = self.table(mfn)
        old = int(table[index])
        if new & _P:
            if new & self.l1_disallow:
                return self._l1_refusal(R_BAD_FLAGS, new, mfn, index)
            if not (old ^ new) & _REVALIDATE:
                self._write(table, index, old, new | self.user_bit, preserve_ad)
                return 0
            rc, new = self.get_page_from_l1e(new, mfn, index, pg_owner)
            if rc:
                if self.why is not None:
                    self.why = _with_old(self.why, old)
                return rc
        self._write(table, index, old, new, preserve_ad)
        self.put_page_from_l1e(old)
        return 0

    def mod_upper_entry(self, level: int, mfn: int, index: int, new: int,
                        preserve_ad: bool) -> int:
        """mod_l2_entry / mod_l3_entry / mod_l4_entry."""
        table = self.table(mfn)
        old = int(table[index])
        t = int(self.type[mfn])
        if not self._is_guest_slot(t, index) or (level == 3 and not self.is64 and index >= 3):
            if level == 2:
                return self.refuse(-EPERM, "L2 update in Xen's private area", mfn, index, old, new)
            what = "PAE L3 slot 3 holds Xen's L2 and cannot be changed" if level == 3 else \
                f"L4 slot {index} is one of Xen's ({XEN_L4_FIRST}-{XEN_L4_LAST})"
            return self.refuse(-EINVAL, what, mfn, index, old, new)
        if new & _P:
            disallow = {2: self.l2_disallow, 3: self.l3_disallow, 4: self.l4_disallow}[level]
            if new & disallow:
                return self._upper(level, new, mfn, index)      # refuses, saying why
            if not (old ^ new) & _REVALIDATE:
                self._write(table, index, old, new | self.user_bit, preserve_ad)
                return 0
            rc = self._upper(level, new, mfn, index)
            if rc:
                if self.why is not None:
                    self.why = _with_old(self.why, old)
                return rc
            if self.user_bit:
                new |= self.user_bit
        self._write(table, index, old, new, preserve_ad)
        self.put_page_from_upper(old, mfn)
        return 0


def _with_old(why: Rejection, old: int) -> Rejection:
    if why.old is not None or why.new is None:
        return why
    return Rejection(why.rule, why.error, why.mfn, why.index, old, why.new, why.op)

"""Grant tables, version 1 (Xen's ``common/grant_table.c``): the ``grant_table_op`` hypercall.

A domain shares its pages with other domains by writing ``grant_entry_v1 {u16 flags; u16 domid;
u32 frame}`` entries into its grant table: frames that Xen allocates from its own heap and shares
with the guest (``share_xen_page_with_guest``), so that the guest can map and write them. Xen
creates one frame with the domain (``INITIAL_NR_GRANT_FRAMES``) and grows the table up to
``max_grant_frames`` when the guest asks for more frames with ``GNTTABOP_setup_table`` (or maps
one with ``XENMEM_add_to_physmap``). A PV guest is given machine frame numbers and maps them itself.

What a lone domU can and cannot do here, compared with Xen:

* ``setup_table``, ``query_size``, ``get_version``, ``get_status_frames`` and ``swap_grant_ref``
  behave as in Xen, including their per-operation ``status`` codes (``GNTST_*``), which Xen writes
  into the argument while the hypercall itself returns 0.
* Only version 1 exists: xendbg behaves as Xen booted with ``gnttab=max-ver:1``, where
  ``set_version(2)`` fails with ``-ENOSYS`` ("behave as before set_version was introduced") and
  writes the current version back.
* Xen looks domains up by number for ``map_grant_ref`` and ``transfer`` (``DOMID_SELF`` is not a
  number, so it is a bad domain) and with ``DOMID_SELF`` allowed for ``copy``. There is no other
  guest domain; xendbg's domain 0 only terminates the backends' event channels and has no grant
  table. Every other domain id is answered ``GNTST_bad_domain``, as Xen answers for a domain that
  does not exist.
* ``copy`` works inside the domain (frames by number with ``DOMID_SELF``, or its own grants),
  taking page references and a writable type through the MMU's frame table as Xen does.
* Mapping or transferring to the domain itself by its own number needs what the MMU does not offer
  (grant PTEs, ``steal_page``); that case stops the batch with ``-ENOSYS``, after every check Xen
  makes before it takes a page reference.
* No mapping ever succeeds, so the domain's maptrack table stays empty and every unmap is
  ``GNTST_bad_handle``, as on Xen.
* ``dump_table`` is gone from Xen (``-ENOSYS``).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np

from xendbg.machine.abi import xen as X
from xendbg.machine.abi.errno import (
    EFAULT,
    EILSEQ,
    EINVAL,
    ENOSYS,
    EOPNOTSUPP,
    EPERM,
    ESRCH,
)
from xendbg.machine.domain import INVALID_MFN
from xendbg.machine.memory import PAGE_SHIFT, PAGE_SIZE

# --- the ABI (grant_table.h) -----------------------------------------------------------------------
GNTST_okay = 0
GNTST_general_error = -1
GNTST_bad_domain = -2
GNTST_bad_gntref = -3
GNTST_bad_handle = -4
GNTST_bad_virt_addr = -5
GNTST_bad_dev_addr = -6
GNTST_no_device_space = -7
GNTST_permission_denied = -8
GNTST_bad_page = -9
GNTST_bad_copy_arg = -10
GNTST_address_too_big = -11
GNTST_eagain = -12
GNTST_no_space = -13

GTF_invalid = 0
GTF_permit_access = 1
GTF_accept_transfer = 2
GTF_transitive = 3
GTF_type_mask = 3
GTF_readonly = 1 << 2
GTF_reading = 1 << 3
GTF_writing = 1 << 4
GTF_PWT = 1 << 5
GTF_PCD = 1 << 6
GTF_PAT = 1 << 7
GTF_sub_page = 1 << 8
GTF_transfer_committed = 1 << 2
GTF_transfer_completed = 1 << 3

GNTMAP_device_map = 1 << 0
GNTMAP_host_map = 1 << 1
GNTMAP_readonly = 1 << 2
GNTCOPY_source_gref = 1 << 0
GNTCOPY_dest_gref = 1 << 1
GNTTAB_CACHE_CLEAN = 1 << 0
GNTTAB_CACHE_INVAL = 1 << 1

GNTTABOP_CMD_MASK = (1 << 12) - 1     # the bits above carry a continuation argument
INITIAL_NR_GRANT_FRAMES = 1
MAX_GRANT_FRAMES = 64                 # Xen's gnttab_max_frames default; xl's max_grant_frames too
ENTRY_SIZE = 8                        # sizeof(grant_entry_v1)
ENTRIES_PER_FRAME = PAGE_SIZE // ENTRY_SIZE

GNTST_NAMES = {v: k for k, v in dict(globals()).items() if k.startswith("GNTST_")}
_TYPE_NAMES = {GTF_invalid: "invalid", GTF_permit_access: "permit_access",
               GTF_accept_transfer: "accept_transfer", GTF_transitive: "transitive"}


@dataclass(frozen=True)
class GrantEntryView:
    """One in-use entry of the shared table, as the debugger shows it."""

    ref: int
    flags: int
    flag_names: tuple[str, ...]
    domid: int
    frame: int


def decode_flags(flags: int) -> tuple[str, ...]:
    """``GTF_*`` names of a v1 entry's flags (the meaning of bits 2-3 depends on the type)."""
    kind = flags & GTF_type_mask
    names = [_TYPE_NAMES[kind]]
    if kind == GTF_accept_transfer:
        bits = ((GTF_transfer_committed, "transfer_committed"),
                (GTF_transfer_completed, "transfer_completed"))
    else:
        bits = ((GTF_readonly, "readonly"), (GTF_reading, "reading"), (GTF_writing, "writing"),
                (GTF_PWT, "PWT"), (GTF_PCD, "PCD"), (GTF_PAT, "PAT"), (GTF_sub_page, "sub_page"))
    names += [name for bit, name in bits if flags & bit]
    return tuple(names)


class GrantTable:
    """The domain's grant table: its shared frames and the ``grant_table_op`` sub-operations."""

    def __init__(self, machine, max_frames: int = MAX_GRANT_FRAMES) -> None:
        self.m = machine
        self.version = 1
        self.max_frames = max_frames
        self.frames: list[int] = []             # mfn of each shared frame, in table order
        self.frame_gpfn: list[int | None] = []  # where add_to_physmap put each frame
        self._opaque = 0                        # cache_flush's continuation argument
        if not self._grow(INITIAL_NR_GRANT_FRAMES):
            raise MemoryError("no free machine frame for the initial grant-table frame")

    # -- the frames ----------------------------------------------------------------------------
    @property
    def nr_frames(self) -> int:
        return len(self.frames)

    @property
    def nr_entries(self) -> int:
        return self.nr_frames * ENTRIES_PER_FRAME

    def _grow(self, nr_frames: int) -> bool:
        """Xen's ``gnttab_grow_table``: all the new frames, or none.

        Free frames are those nobody owns (``DOMID_INVALID``): the unused rest of Xen's own region
        first (grant frames are Xen-heap pages), then the builder's free pool; taking the lowest
        keeps runs deterministic. Each is cleared, has no pseudo-physical frame (M2P entry
        invalid) and is shared with the domain writable through the MMU's frame table
        (``share_xen_page_with_guest``), so that the guest's page tables may map it read-write
        and it can never become a page table.
        """
        need = nr_frames - self.nr_frames
        if need <= 0:
            return True
        free = np.flatnonzero(self.m.memory.owner == X.DOMID_INVALID)[:need].tolist()
        if len(free) < need:
            return False
        m2p = self.m.layout.m2p
        for mfn in free:
            self.m.memory.clear_frame(mfn)
            m2p[mfn] = np.iinfo(m2p.dtype).max
            self.m.mmu.share_xen_page_with_guest(mfn, writable=True)
        self.frames += free
        self.frame_gpfn += [None] * need
        return True

    def _entry_ma(self, ref: int) -> int:
        return (self.frames[ref // ENTRIES_PER_FRAME] << PAGE_SHIFT) + (ref % ENTRIES_PER_FRAME) * 8

    def read_entry(self, ref: int) -> tuple[int, int, int]:
        """(flags, domid, frame) of entry ``ref``, straight from the shared frame."""
        flags, domid, frame = struct.unpack_from("<HHI", self.m.memory.view, self._entry_ma(ref))
        return flags, domid, frame

    def entries(self) -> list[GrantEntryView]:
        """Every entry the guest has filled in (type not ``GTF_invalid``), for the debugger."""
        out = []
        for i, mfn in enumerate(self.frames):
            table = self.m.memory.bytes[mfn << PAGE_SHIFT:(mfn + 1) << PAGE_SHIFT].view("<u8")
            for slot in np.flatnonzero(table & GTF_type_mask).tolist():
                ref = i * ENTRIES_PER_FRAME + slot
                flags, domid, frame = self.read_entry(ref)
                out.append(GrantEntryView(ref, flags, decode_flags(flags), domid, frame))
        return out

    def add_to_physmap(self, idx: int, gpfn: int) -> int:
        """``XENMEM_add_to_physmap(XENMAPSPACE_grant_table)``: grant frame ``idx`` becomes ``gpfn``.

        As Xen's ``gnttab_map_frame``, an index past the current size grows the table (up to the
        maximum; beyond it, ``-EINVAL``). The frame leaves the pfn it had before, and the frame that
        was at ``gpfn`` is unhooked from it (it stays the domain's: without page reference counts
        xendbg cannot tell whether the guest still maps it, so it is not freed). ``gpfn`` must lie
        inside the domain's p2m. (Xen from 4.15 on serves add_to_physmap to translated guests only;
        older Xen did it for PV guests too, by changing the M2P.)
        """
        if idx >= self.nr_frames:
            if idx + 1 > self.max_frames or not self._grow(idx + 1):
                return -EINVAL
        p2m = self.m.domain.p2m
        if not 0 <= gpfn < len(p2m):
            return -EINVAL
        m2p = self.m.layout.m2p
        invalid_m2p = np.iinfo(m2p.dtype).max
        mfn = self.frames[idx]
        old_mfn = int(p2m[gpfn])
        if old_mfn != INVALID_MFN and old_mfn != mfn and 0 <= old_mfn < len(m2p):
            m2p[old_mfn] = invalid_m2p
        old_gpfn = int(m2p[mfn])
        if old_gpfn != invalid_m2p and 0 <= old_gpfn < len(p2m) and int(p2m[old_gpfn]) == mfn:
            p2m[old_gpfn] = INVALID_MFN
        p2m[gpfn] = mfn
        m2p[mfn] = gpfn
        self.frame_gpfn[idx] = gpfn
        return 0

    # -- domains ---------------------------------------------------------------------------------
    def _is_self(self, domid: int, allow_self: bool) -> bool:
        """Xen's domain lookup: ``rcu_lock_domain_by_id`` (``allow_self`` False) or ``…by_any_id``.

        Only the calling domain has a grant table here (see the module docstring).
        """
        return domid == self.m.domain.domid or (allow_self and domid == X.DOMID_SELF)

    # -- the hypercall -----------------------------------------------------------------------------
    def op(self, cmd: int, uop: int, count: int) -> int:
        """``do_grant_table_op``: run ``count`` operations of kind ``cmd`` at guest address ``uop``."""
        cmd &= 0xFFFFFFFF
        count &= 0xFFFFFFFF
        if count >= 1 << 31:
            return -EINVAL
        opaque = cmd & ~GNTTABOP_CMD_MASK
        cmd &= GNTTABOP_CMD_MASK
        if cmd != X.GNTTABOP_cache_flush and opaque:
            return -EINVAL
        self._opaque = opaque
        handler = _OPS.get(cmd)
        if handler is None:
            return -ENOSYS
        size = self._size(cmd)
        if cmd in _ARRAY_OPS and not self.m.guest.accessible(uop, count * size):
            return -EFAULT
        return handler(self, uop, count, size)

    def _size(self, cmd: int) -> int:
        return (_SIZES_64 if self.m.abi.bits == 64 else _SIZES_32)[cmd]

    def _read(self, va: int, size: int) -> bytes | None:
        return self.m.guest.read(va, size)

    def _put_status(self, va: int, offset: int, status: int) -> bool:
        return self.m.guest.write(va + offset, struct.pack("<h", status))

    def gnttab_map_grant_ref(self, uop: int, count: int, size: int) -> int:
        for i in range(count):
            va = uop + i * size
            raw = self._read(va, size)
            if raw is None:
                return -EFAULT
            _host_addr, flags, ref, dom = struct.unpack_from("<QIIH", raw)
            if not flags & (GNTMAP_device_map | GNTMAP_host_map):
                status = GNTST_bad_gntref
            elif not self._is_self(dom, allow_self=False):
                status = GNTST_bad_domain
            else:
                status = self._check_own_grant(ref, bool(flags & GNTMAP_readonly), mapping=True)
                if status == GNTST_okay:
                    return -ENOSYS       # needs the MMU's page references (module docstring)
            out = bytearray(raw)
            struct.pack_into("<h", out, 18, status)
            if not self.m.guest.write(va, bytes(out)):
                return -EFAULT
        return 0

    def _check_own_grant(self, ref: int, readonly: bool, mapping: bool) -> int:
        """Xen's checks of a grant of the domain's own table to itself, up to the page reference.

        The bounds check, then ``_set_status_v1`` (type, grantee, read-only), then
        ``get_paged_frame``: for a PV domain the entry's frame is a machine frame, which must be
        the granting domain's.
        """
        if ref >= self.nr_entries:
            return GNTST_bad_gntref
        flags, domid, frame = self.read_entry(ref)
        mask = GTF_type_mask | (GTF_sub_page if mapping else 0)
        if (flags & mask) != GTF_permit_access or domid != self.m.domain.domid:
            return GNTST_general_error
        if not readonly and flags & GTF_readonly:
            return GNTST_general_error
        if not self.m.owns_frame(frame):
            return GNTST_bad_page
        return GNTST_okay

    def _unmap(self, uop: int, count: int, size: int) -> int:
        """unmap_grant_ref and unmap_and_replace: no handle was ever given out."""
        for i in range(count):
            va = uop + i * size
            if self._read(va, size) is None:
                return -EFAULT
            if not self._put_status(va, 20, GNTST_bad_handle):
                return -EFAULT
        return 0

    def gnttab_setup_table(self, uop: int, count: int, size: int) -> int:
        if count != 1:
            return -EINVAL
        raw = self._read(uop, size)
        if raw is None:
            return -EFAULT
        word = self.m.abi.word
        dom, nr_frames = struct.unpack_from("<HxxI", raw)
        frame_list = int.from_bytes(raw[size - word:], "little")
        if not self.m.guest.accessible(frame_list, nr_frames * word):
            return -EFAULT
        if not self._is_self(dom, allow_self=True):
            status = GNTST_bad_domain
        elif nr_frames > self.max_frames or (nr_frames > self.nr_frames
                                             and not self._grow(nr_frames)):
            status = GNTST_general_error
        else:
            status = GNTST_okay
            for i in range(nr_frames):
                if not self.m.guest.write_word(frame_list + i * word, self.frames[i]):
                    status = GNTST_bad_virt_addr
        if not self._put_status(uop, 8, status):
            return -EFAULT
        return 0

    def gnttab_transfer(self, uop: int, count: int, size: int) -> int:
        word = self.m.abi.word
        for i in range(count):
            va = uop + i * size
            raw = self._read(va, size)
            if raw is None:
                return -EFAULT
            # For a PV domain the "gmfn" is a machine frame. Xen takes the page from the domain
            # (steal_page) before it looks the receiver up.
            mfn = int.from_bytes(raw[:word], "little")
            special = mfn in self.frames or mfn == self.m.domain.shared_info_mfn
            if not self.m.owns_frame(mfn) or special:
                status = GNTST_bad_page  # steal_page refuses others' and Xen-heap pages
            else:
                return -ENOSYS           # steal_page needs the MMU's reference counts
            if not self._put_status(va, word + 8, status):
                return -EFAULT
        return 0

    def gnttab_copy(self, uop: int, count: int, size: int) -> int:
        """Copy bytes between frames named by number (``DOMID_SELF`` only) or by grant reference.

        Only the domain's own frames and grants exist here, so this is a copy inside the domain,
        done as Xen does it: the source is referenced read-only, the destination must take a
        writable type (a page table or descriptor page cannot be written this way).
        """
        for i in range(count):
            va = uop + i * size
            raw = self._read(va, size)
            if raw is None:
                return -EFAULT
            status = self._copy_one(raw)
            if not self._put_status(va, size - 4, status):
                return -EFAULT
        return 0

    def _copy_one(self, raw: bytes) -> int:
        half = 16 if self.m.abi.bits == 64 else 8           # sizeof(struct gnttab_copy_ptr)
        ref_fmt = "<Q" if self.m.abi.bits == 64 else "<I"
        length, flags = struct.unpack_from("<HH", raw, 2 * half)
        sides = []
        for base, gref_flag, readonly in ((0, GNTCOPY_source_gref, True),
                                          (half, GNTCOPY_dest_gref, False)):
            (ref_or_gmfn,) = struct.unpack_from(ref_fmt, raw, base)
            domid, offset = struct.unpack_from("<HH", raw, base + half // 2)
            if domid != X.DOMID_SELF and not flags & gref_flag:
                return GNTST_permission_denied         # only DOMID_SELF may name a frame
            if not self._is_self(domid, allow_self=True):
                return GNTST_bad_domain
            sides.append((ref_or_gmfn, offset, bool(flags & gref_flag), readonly))
        held: list[tuple[int, bool]] = []
        try:
            mfns = []
            for ref_or_gmfn, _offset, is_gref, readonly in sides:
                if is_gref:
                    ref = ref_or_gmfn & 0xFFFFFFFF
                    status = self._check_own_grant(ref, readonly, mapping=False)
                    if status != GNTST_okay:
                        return status
                    mfn = self.read_entry(ref)[2]
                else:
                    mfn = ref_or_gmfn              # a PV domain's gmfn is a machine frame
                    if not self.m.owns_frame(mfn):
                        return GNTST_bad_page
                if not self.m.mmu.hold(mfn):                 # get_paged_frame
                    return GNTST_bad_page
                held.append((mfn, False))
                if not readonly:
                    if not self.m.mmu.hold(mfn, writable=True):
                        return GNTST_general_error   # a page table, a GDT page …: not writable
                    held.append((mfn, True))
                mfns.append(mfn)
            (src_off, dst_off) = (sides[0][1], sides[1][1])
            if src_off + length > PAGE_SIZE or dst_off + length > PAGE_SIZE:
                return GNTST_bad_copy_arg
            src = (mfns[0] << PAGE_SHIFT) + src_off
            self.m.memory.write((mfns[1] << PAGE_SHIFT) + dst_off, self.m.memory.read(src, length))
            return GNTST_okay
        finally:
            for mfn, writable in reversed(held):
                self.m.mmu.release(mfn, writable)

    def gnttab_query_size(self, uop: int, count: int, size: int) -> int:
        if count != 1:
            return -EINVAL
        raw = self._read(uop, size)
        if raw is None:
            return -EFAULT
        out = bytearray(raw)
        (dom,) = struct.unpack_from("<H", raw)
        if self._is_self(dom, allow_self=True):
            struct.pack_into("<IIh", out, 4, self.nr_frames, self.max_frames, GNTST_okay)
        else:
            struct.pack_into("<h", out, 12, GNTST_bad_domain)
        return 0 if self.m.guest.write(uop, bytes(out)) else -EFAULT

    def gnttab_set_version(self, uop: int, count: int, size: int) -> int:
        raw = self._read(uop, size)
        if raw is None:
            return -EFAULT
        (version,) = struct.unpack("<I", raw)
        if version not in (1, 2):
            rc = -EINVAL
        elif version == 2:
            rc = -ENOSYS                 # gnttab=max-ver:1: "behave as before set_version"
        else:
            rc = 0                       # already version 1
        if not self.m.guest.write_u32(uop, self.version):
            return -EFAULT
        return rc

    def gnttab_get_version(self, uop: int, count: int, size: int) -> int:
        raw = self._read(uop, size)
        if raw is None:
            return -EFAULT
        (dom,) = struct.unpack_from("<H", raw)
        if not self._is_self(dom, allow_self=True):
            return -ESRCH
        return 0 if self.m.guest.write_u32(uop + 4, self.version) else -EFAULT

    def gnttab_get_status_frames(self, uop: int, count: int, size: int) -> int:
        """Version 2 only: a version-1 table has no status frames to give."""
        if count != 1:
            return -EINVAL
        raw = self._read(uop, size)
        if raw is None:
            return -EFAULT
        nr_frames, dom = struct.unpack_from("<IH", raw)
        if not self._is_self(dom, allow_self=True):
            status = GNTST_bad_domain
        else:
            status = GNTST_general_error if nr_frames > 0 else GNTST_okay
        return 0 if self._put_status(uop, 6, status) else -EFAULT

    def gnttab_swap_grant_ref(self, uop: int, count: int, size: int) -> int:
        for i in range(count):
            va = uop + i * size
            raw = self._read(va, size)
            if raw is None:
                return -EFAULT
            ref_a, ref_b = struct.unpack_from("<II", raw)
            if ref_a >= self.nr_entries or ref_b >= self.nr_entries:
                status = GNTST_bad_gntref
            else:
                # No entry is ever pinned here (nothing maps them), so the swap always happens.
                ma_a, ma_b = self._entry_ma(ref_a), self._entry_ma(ref_b)
                mem = self.m.memory
                a, b = mem.read(ma_a, ENTRY_SIZE), mem.read(ma_b, ENTRY_SIZE)
                mem.write(ma_a, b)
                mem.write(ma_b, a)
                status = GNTST_okay
            if not self._put_status(va, 8, status):
                return -EFAULT
        return 0

    def gnttab_cache_flush(self, uop: int, count: int, size: int) -> int:
        """Cache maintenance on a granted or own frame; x86 can clean but not just invalidate."""
        for i in range(count):
            raw = self._read(uop + i * size, size)
            if raw is None:
                return -EFAULT
            addr, offset, length, op = struct.unpack_from("<QHHI", raw)
            if offset >= PAGE_SIZE or length > PAGE_SIZE or offset + length > PAGE_SIZE or \
                    op & ~(GNTTAB_CACHE_INVAL | GNTTAB_CACHE_CLEAN):
                return -EINVAL
            if length == 0 or op == 0:
                if i == 0 and self._opaque:
                    return -EILSEQ       # a continuation of nothing: the guest made it up
                continue
            mfn = addr >> PAGE_SHIFT
            if not self.m.memory.is_valid_mfn(mfn):
                return -EINVAL
            if not self.m.owns_frame(mfn):
                return -EPERM            # the owner has no grant table (or there is none)
            if op == GNTTAB_CACHE_INVAL:
                return -EOPNOTSUPP       # x86 cannot invalidate without writing back
        return 0


def do_grant_table_op(m, cmd: int, uop: int, count: int) -> int:
    return m.grant_table.op(cmd, uop, count)


_OPS = {
    X.GNTTABOP_map_grant_ref: GrantTable.gnttab_map_grant_ref,
    X.GNTTABOP_unmap_grant_ref: GrantTable._unmap,
    X.GNTTABOP_setup_table: GrantTable.gnttab_setup_table,
    X.GNTTABOP_transfer: GrantTable.gnttab_transfer,
    X.GNTTABOP_copy: GrantTable.gnttab_copy,
    X.GNTTABOP_query_size: GrantTable.gnttab_query_size,
    X.GNTTABOP_unmap_and_replace: GrantTable._unmap,
    X.GNTTABOP_set_version: GrantTable.gnttab_set_version,
    X.GNTTABOP_get_status_frames: GrantTable.gnttab_get_status_frames,
    X.GNTTABOP_get_version: GrantTable.gnttab_get_version,
    X.GNTTABOP_swap_grant_ref: GrantTable.gnttab_swap_grant_ref,
    X.GNTTABOP_cache_flush: GrantTable.gnttab_cache_flush,
}
# Operations on an array of ``count`` structures, whose whole range Xen checks first.
_ARRAY_OPS = frozenset({X.GNTTABOP_map_grant_ref, X.GNTTABOP_unmap_grant_ref,
                        X.GNTTABOP_unmap_and_replace, X.GNTTABOP_transfer, X.GNTTABOP_copy,
                        X.GNTTABOP_swap_grant_ref, X.GNTTABOP_cache_flush})
# sizeof the argument structures (gcc -m64 / -m32 with Xen 4.17's grant_table.h).
_SIZES_64 = {0: 32, 1: 24, 2: 24, 4: 24, 5: 40, 6: 16, 7: 24, 8: 4, 9: 16, 10: 8, 11: 12, 12: 16}
_SIZES_32 = {0: 32, 1: 24, 2: 16, 4: 16, 5: 24, 6: 16, 7: 24, 8: 4, 9: 12, 10: 8, 11: 12, 12: 16}

"""``memory_op``: the domain's memory reservation and where things are (Xen's ``common/memory.c``
and the x86 ``arch_memory_op``).

``memory_op(cmd, arg)``; bits 6 and up of ``cmd`` are the extent to start from (how Xen resumes a
preempted call; a guest may pass it too).

* ``increase_reservation`` / ``decrease_reservation`` / ``populate_physmap`` take a
  ``xen_memory_reservation {extent_start, nr_extents, extent_order, mem_flags, domid}`` and return
  the number of extents done (partial progress is not an error: the guest compares). A PV guest is
  not translated, so its extent list holds *machine* frame numbers: increase writes the new mfns
  there; decrease reads the mfns to give back; populate reads pseudo-physical frame numbers,
  writes the mfns back, and sets the M2P. New frames come from the free pool (frames owned by
  DOMID_INVALID), scrubbed, never beyond ``max_pages``; a given-back frame is released once
  nothing maps it any more (its pin is dropped; its M2P entry and xendbg's p2m view become
  invalid). ``extent_order`` up to 9 (Xen's limit for a domU); ``mem_flags`` address bits limit
  where frames may be.
* ``current_reservation`` / ``maximum_reservation`` / ``maximum_gpfn`` (arg: a domid):
  the page counts, and the guest's own ``shared_info.arch.max_pfn`` - 1.
* ``maximum_ram_page``: the number of machine frames.
* ``memory_map``: the guest's E820: one RAM entry ``[0, nr_pages * 4 KiB)``, as Xen gives a PV domU.
* ``machphys_mapping``: ``{v_start, v_end, max_mfn}`` of the read-only M2P in the guest's space;
  ``machphys_mfn_list``: the mfn of each 2 MiB of the M2P.
* ``add_to_physmap``: for a PV guest only the M2P changes: ``XENMAPSPACE_shared_info`` (idx 0)
  records the shared_info frame at ``gpfn``; ``XENMAPSPACE_grant_table`` is the grant table's to
  do (``-ENOSYS`` while the machine has none); other spaces ``-ENOSYS``.

Anything else is ``-ENOSYS``. Another domain named by a domid gets ``-EPERM`` (Xen's policy for an
unprivileged caller) or ``-ESRCH`` (no such domain).
"""

from __future__ import annotations

import struct

from xendbg.machine.abi import xen as X
from xendbg.machine.abi.errno import EDOM, EFAULT, EINVAL, ENOSYS, EPERM, ESRCH
from xendbg.machine.builder import DOMID_OTHER
from xendbg.machine.domain import INVALID_MFN
from xendbg.machine.memory import PAGE_SHIFT

from ._validate import F_ALLOCATED, F_PINNED, F_XEN_HEAP

MEMOP_EXTENT_SHIFT = 6
MEMOP_CMD_MASK = (1 << MEMOP_EXTENT_SHIFT) - 1
DOMU_MAX_ORDER = 9
XENMAPSPACE_shared_info = 0
XENMAPSPACE_grant_table = 1
XENMAPSPACE_gmfn_foreign = 4
XENMEMF_populate_on_demand = 1 << 16
E820_RAM = 1
M2P_CHUNK = 2 << 20             # machphys_mfn_list reports one mfn per 2 MiB of the M2P


def _domain(m, domid: int) -> int:
    """0 if ``domid`` is this domain, else -ESRCH / -EPERM (``rcu_lock_domain_by_any_id`` and
    Xen's policy)."""
    domid &= 0xFFFF
    if domid in (X.DOMID_SELF, m.domain.domid):
        return 0
    return -EPERM if domid == DOMID_OTHER else -ESRCH


def do_memory_op(m, cmd: int, arg: int) -> int:
    op = cmd & MEMOP_CMD_MASK
    start = cmd >> MEMOP_EXTENT_SHIFT
    if op in (X.XENMEM_increase_reservation, X.XENMEM_decrease_reservation,
              X.XENMEM_populate_physmap):
        return _reservation(m, op, start, arg)
    if op == X.XENMEM_maximum_ram_page:
        return -EINVAL if start else m.memory.nr_frames
    if op in (X.XENMEM_current_reservation, X.XENMEM_maximum_reservation,
              X.XENMEM_maximum_gpfn):
        if start:
            return -EINVAL
        raw = m.guest.read(arg, 2)
        if raw is None:
            return -EFAULT
        rc = _domain(m, struct.unpack("<H", raw)[0])
        if rc:
            return rc
        if op == X.XENMEM_current_reservation:
            return m.mmu.tot_pages
        if op == X.XENMEM_maximum_reservation:
            return m.domain.max_pages
        word = m.abi.word
        max_pfn = int.from_bytes(m.memory.read((m.domain.shared_info_mfn << PAGE_SHIFT)
                                               + m.abi.arch_shared, word), "little")
        return (max_pfn or 1) - 1
    if op == X.XENMEM_add_to_physmap:
        return _add_to_physmap(m, start, arg)
    if start:
        return -ENOSYS                   # the x86 operations take no extent
    if op == X.XENMEM_memory_map:
        return _memory_map(m, arg)
    if op == X.XENMEM_machphys_mapping:
        abi = m.abi
        nr = (abi.m2p_end - abi.m2p_start) // abi.m2p_entry
        fmt = "<3Q" if abi.word == 8 else "<3I"
        data = struct.pack(fmt, abi.m2p_start, abi.m2p_end, nr - 1)
        return 0 if m.guest.write(arg, data) else -EFAULT
    if op == X.XENMEM_machphys_mfn_list:
        return _machphys_mfn_list(m, arg)
    return -ENOSYS


def _reservation(m, op: int, start: int, arg: int) -> int:
    word = m.abi.word
    fmt = "<QQIIH" if word == 8 else "<IIIIH"
    raw = m.guest.read(arg, struct.calcsize(fmt))
    if raw is None:
        return start
    extents, nr_extents, order, mem_flags, domid = struct.unpack(fmt, raw)
    if nr_extents > (0xFFFFFFFF >> MEMOP_EXTENT_SHIFT) or start >= nr_extents:
        return start
    if _domain(m, domid):
        return start
    max_mfn = None
    bits = mem_flags & 0xFF
    if bits and bits < (m.memory.nr_frames - 1).bit_length() + PAGE_SHIFT:
        if bits <= PAGE_SHIFT:
            return start
        max_mfn = 1 << (bits - PAGE_SHIFT)
    if order > DOMU_MAX_ORDER:
        return start
    if op == X.XENMEM_populate_physmap and mem_flags & XENMEMF_populate_on_demand:
        return start                    # "disallow populating PoD pages on oneself"
    if (extents or op != X.XENMEM_increase_reservation) and \
            not m.guest.accessible(extents + start * word, (nr_extents - start) * word):
        return start
    for i in range(start, nr_extents):
        slot = extents + i * word
        if op == X.XENMEM_decrease_reservation:
            gmfn = m.guest.read_word(slot)
            if gmfn is None or not all(guest_remove_page(m, gmfn + j) for j in range(1 << order)):
                return i
            continue
        gpfn = 0
        if op == X.XENMEM_populate_physmap:
            gpfn = m.guest.read_word(slot)
            if gpfn is None:
                return i
        if m.mmu.tot_pages + (1 << order) > m.domain.max_pages:
            return i                    # assign_pages: over-allocation
        mfn = m.mmu.alloc_pages(order, max_mfn)
        if mfn is None:
            return i
        m.mmu.assign_pages(mfn, order)
        if op == X.XENMEM_populate_physmap:
            for j in range(1 << order):
                m.mmu.set_m2p(mfn + j, gpfn + j)
                _set_p2m(m, gpfn + j, mfn + j)
        if (extents or op == X.XENMEM_populate_physmap) and not m.guest.write_word(slot, mfn):
            return i
    return nr_extents


def _set_p2m(m, pfn: int, mfn: int) -> None:
    """xendbg's view of the p2m, over the domain's initial pseudo-physical space (the guest keeps
    its own p2m; Xen's only record of a PV guest's frames is the M2P)."""
    p2m = m.domain.p2m
    if pfn < len(p2m):
        p2m[pfn] = mfn


def guest_remove_page(m, mfn: int) -> bool:
    """Xen's ``guest_remove_page`` for a PV guest (``mfn`` is what the guest passed)."""
    mmu = m.mmu
    pt = mmu.pt
    if not pt.get_page(mfn):
        return False
    if pt.flags[mfn] & F_XEN_HEAP:
        pt.put_page(mfn)                # Xen's own page shared with the guest: not RAM to free
        return False
    if pt.flags[mfn] & F_PINNED:
        mmu.unpin(mfn, "decrease_reservation")
    if pt.flags[mfn] & F_ALLOCATED:
        pt.flags[mfn] &= 0xFF ^ F_ALLOCATED
        pt.put_page(mfn)
    pfn = int(mmu.m2p[mfn])
    d = m.domain
    if pfn < len(d.p2m) and int(d.p2m[pfn]) == mfn:
        d.p2m[pfn] = INVALID_MFN
    mmu.m2p[mfn] = mmu.m2p_invalid
    pt.put_page(mfn)
    return True


def _memory_map(m, arg: int) -> int:
    word = m.abi.word
    raw = m.guest.read(arg, 2 * word)
    if raw is None:
        return -EFAULT
    nr_entries = struct.unpack_from("<I", raw)[0]
    buffer = int.from_bytes(raw[word:2 * word], "little")
    n = min(nr_entries, 1)
    e820 = struct.pack("<QQI", 0, m.domain.nr_pages << PAGE_SHIFT, E820_RAM)
    if n and not m.guest.write(buffer, e820):
        return -EFAULT
    return 0 if m.guest.write_u32(arg, n) else -EFAULT


def _machphys_mfn_list(m, arg: int) -> int:
    word = m.abi.word
    raw = m.guest.read(arg, 3 * word)
    if raw is None:
        return -EFAULT
    max_extents = struct.unpack_from("<I", raw)[0]
    extents = int.from_bytes(raw[word:2 * word], "little")
    m2p_mfns = m.xen_area.m2p_mfns
    chunks = (m.memory.nr_frames * m.abi.m2p_entry + M2P_CHUNK - 1) // M2P_CHUNK
    per_chunk = M2P_CHUNK >> PAGE_SHIFT
    i = 0
    while i < min(max_extents, chunks):
        if not m.guest.write_word(extents + i * word, m2p_mfns[0] + i * per_chunk):
            return -EFAULT
        i += 1
    return 0 if m.guest.write_u32(arg + 2 * word, i) else -EFAULT


def _add_to_physmap(m, start: int, arg: int) -> int:
    if start > 0xFFFF:
        return -EDOM
    fmt = "<HHIQQ" if m.abi.word == 8 else "<HHIII"
    raw = m.guest.read(arg, struct.calcsize(fmt))
    if raw is None:
        return -EFAULT
    domid, _size, space, idx, gpfn = struct.unpack(fmt, raw)
    if space == XENMAPSPACE_gmfn_foreign:
        return -ENOSYS
    rc = _domain(m, domid)
    if rc:
        return rc
    if space == XENMAPSPACE_shared_info:
        if idx != 0:
            return -EINVAL
        m.mmu.set_m2p(m.domain.shared_info_mfn, gpfn)
        return 0
    if space == XENMAPSPACE_grant_table:
        grant_table = getattr(m, "grant_table", None)
        if grant_table is None:
            return -ENOSYS
        return grant_table.add_to_physmap(idx, gpfn)
    return -ENOSYS

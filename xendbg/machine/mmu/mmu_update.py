"""``mmu_update`` and ``update_va_mapping`` (Xen's ``do_mmu_update``, ``__do_update_va_mapping``).

``mmu_update(req[], count, done, foreigndom)`` runs a list of ``{ptr, val}`` requests; the low
three bits of ``ptr`` are the command:

* ``MMU_NORMAL_PT_UPDATE`` / ``MMU_PT_UPDATE_PRESERVE_AD`` (and ``_NO_TRANSLATE``, the same for a
  PV guest): ``*ptr = val`` for the entry at machine address ``ptr``. If the frame is a validated
  table in use, the update goes through ``mod_lN_entry`` (the new entry is validated, the old one
  drops its references; PRESERVE_AD keeps the entry's current A/D bits); otherwise the frame is
  plain data and is written after taking a writable type (which fails for a descriptor page or a
  table in use). The frame must be the domain's.
* ``MMU_MACHPHYS_UPDATE``: ``M2P[ptr >> 12] = val`` for a frame of the domain.

Requests run in order and stop at the first failure, whose error is the result; ``*done`` (if
given) receives the number of requests completed, plus the count already there when the guest
restarts a preempted call (``count`` with bit 31 set). ``foreigndom`` names the domain whose
frames L1 entries may map (DOMID_SELF: this one) and, in bits 16-31, 1 + the domain whose tables
are updated: an unprivileged domain gets ``-ESRCH`` for a domain that does not exist (or itself,
named explicitly), and ``-EPERM`` from Xen's security policy for any other.

``update_va_mapping(va, val, flags)`` is one L1 update addressed by virtual address: the L1 table
that maps ``va`` in the current kernel page tables (found through a present, non-superpage L2
entry) must be a validated L1 of the domain. It then flushes as ``flags`` say: ``UVMF_TLB_FLUSH``
or ``UVMF_INVLPG``, for the local vCPU, ``UVMF_ALL`` vCPUs or the vCPU bitmap pointed to by the
rest of ``flags`` (an unreadable bitmap gives ``-EFAULT`` after the update is done, as in Xen).
``update_va_mapping_otherdomain`` maps a foreign domain's frame the same way, which Xen's policy
refuses to an unprivileged domain.
"""

from __future__ import annotations

import struct

from xendbg.machine.abi import xen as X
from xendbg.machine.abi.errno import EFAULT, EINVAL, ENOSYS, EPERM, ESRCH
from xendbg.machine.builder import DOMID_OTHER
from xendbg.machine.memory import PAGE_SHIFT

from ._validate import T_L1, T_L3, T_SEG_DESC, T_WRITABLE
from .page_types import _P, _PSE, entry_mfn, type_name

MMU_UPDATE_PREEMPTED = 1 << 31


def get_pg_owner(m, domid: int) -> int | None:
    """Xen's ``get_pg_owner``: the domain id a request names, or None (→ -ESRCH)."""
    domid &= 0xFFFF
    if domid == X.DOMID_SELF:
        return m.domain.domid
    if domid == m.domain.domid:
        return None                     # "cannot specify itself as foreign domain"
    if domid in (X.DOMID_IO, X.DOMID_XEN, DOMID_OTHER):
        return domid
    return None


def _start_done(m, count: int, done_ptr: int) -> tuple[int, int]:
    count &= 0xFFFFFFFF
    done = 0
    if count & MMU_UPDATE_PREEMPTED:
        count &= ~MMU_UPDATE_PREEMPTED
        if done_ptr:
            done = m.guest.read_u32(done_ptr) or 0
    return count, done


def do_mmu_update(m, req: int, count: int, done_ptr: int, foreigndom: int) -> int:
    mmu = m.mmu
    d = m.domain.domid
    count, done = _start_done(m, count, done_ptr)
    if not m.guest.accessible(req, count * 16):
        return -EFAULT
    pt_owner = d
    pt_dom = (foreigndom >> 16) & 0xFFFF
    if pt_dom:
        if pt_dom - 1 == DOMID_OTHER:
            pt_owner = DOMID_OTHER
        elif pt_dom - 1 != d:
            return -ESRCH
    pg_owner = get_pg_owner(m, foreigndom)
    rc = 0
    i = 0
    if pg_owner is None:
        rc = -ESRCH
    else:
        while i < count:
            raw = m.guest.read(req + 16 * i, 16)
            if raw is None:
                rc = -EFAULT
                break
            ptr, val = struct.unpack("<QQ", raw)
            mmu.pt.begin()
            cmd = ptr & 7
            if cmd in (X.MMU_NORMAL_PT_UPDATE, X.MMU_PT_UPDATE_PRESERVE_AD,
                       X.MMU_PT_UPDATE_NO_TRANSLATE):
                rc = normal_pt_update(m, ptr & ~7, val, cmd == X.MMU_PT_UPDATE_PRESERVE_AD,
                                      pt_owner, pg_owner)
            elif cmd == X.MMU_MACHPHYS_UPDATE:
                rc = machphys_update(m, ptr, val, pt_owner, pg_owner)
            else:
                rc = mmu.pt.refuse(-ENOSYS, f"unknown mmu_update command {cmd}", new=ptr)
            if rc:
                mmu.reject(f"mmu_update[{i}]", rc)
                break
            i += 1
    if done_ptr:
        m.guest.write_u32(done_ptr, done + i)
    return rc


def _xsm_mmu_update(m, pt_owner: int, pg_owner: int) -> bool:
    """Xen's default policy for an unprivileged domain: only its own tables, and frames of its
    own or of DOMID_IO (which the L1 rules then refuse)."""
    d = m.domain.domid
    return pt_owner == d and pg_owner in (d, X.DOMID_IO)


def normal_pt_update(m, ma: int, val: int, preserve_ad: bool, pt_owner: int,
                     pg_owner: int) -> int:
    pt = m.mmu.pt
    if not _xsm_mmu_update(m, pt_owner, pg_owner):
        return pt.refuse(-EPERM, f"d{m.domain.domid} may not update d{pt_owner}'s tables or map "
                         f"d{pg_owner}'s frames", new=val)
    mfn = ma >> PAGE_SHIFT
    index = (ma & 0xFFF) >> 3
    if not pt.get_page(mfn, pt_owner):
        return pt.refuse(-EINVAL, "the frame to update is not the domain's: " + pt.not_ours(mfn),
                         mfn, index, new=val)
    try:
        t = int(pt.type[mfn])
        if pt.valid_table(mfn):                     # Xen's page_lock(): a frame in use
            level = t & 0xF
            if t == T_L1:
                return pt.mod_l1_entry(mfn, index, val, preserve_ad, pg_owner)
            if 2 <= level <= 4:
                if pg_owner != pt_owner:
                    return pt.refuse(-EINVAL, "only L1 entries may map a foreign domain's frames",
                                     mfn, index, new=val)
                rc = pt.mod_upper_entry(level, mfn, index, val, preserve_ad)
                if rc == 0 and t == T_L3 and not m.is64 and mfn == m.vcpu.guest_table:
                    m.flush_tlb()                   # the CPU caches PAE PDPTEs
                return rc
            if t == T_WRITABLE:
                _write_data(m, ma, val)
                return 0
            what = "a descriptor page" if t == T_SEG_DESC else type_name(t)
            return pt.refuse(-EINVAL, f"the frame is {what}: not updatable with mmu_update", mfn,
                             index, new=val)
        rc = pt.get_page_type(mfn, T_WRITABLE, "written by mmu_update")
        if rc:
            return rc
        _write_data(m, ma, val)
        pt.put_page_type(mfn)
        return 0
    finally:
        pt.put_page(mfn)


def _write_data(m, ma: int, val: int) -> None:
    m.memory.write_u64(ma, val)
    m.cpu.flush_tb()               # a host write does not invalidate translated code


def machphys_update(m, ptr: int, val: int, pt_owner: int, pg_owner: int) -> int:
    pt = m.mmu.pt
    d = m.domain.domid
    mfn = ptr >> PAGE_SHIFT
    if pt_owner != d or pg_owner not in (d, X.DOMID_IO):
        return pt.refuse(-EPERM, "M2P updates only for the domain's own frames", mfn, new=val)
    if not pt.get_page(mfn, pg_owner):
        return pt.refuse(-EINVAL, "M2P update of a frame that is not the domain's: "
                         + pt.not_ours(mfn), mfn, new=val)
    m.mmu.set_m2p(mfn, val)
    pt.put_page(mfn)
    return 0


# -- update_va_mapping -------------------------------------------------------------------------------

def map_guest_l1e(m, va: int) -> tuple[int, int] | None:
    """(mfn of the L1 that maps ``va`` in the kernel's tables, index), or None (Xen's
    ``map_guest_l1e``: the L2 entry must be present and not a superpage)."""
    if not m.guest.accessible(va, 1):
        return None
    mem = m.memory
    table = m.vcpu.guest_table
    if m.is64:
        shifts = (39, 30, 21)
    else:
        entry = mem.read_u64((table << PAGE_SHIFT) + ((va >> 30) & 3) * 8)
        if not entry & _P:
            return None
        table = entry_mfn(entry)
        shifts = (21,)
    for shift in shifts:
        if not mem.is_valid_mfn(table):
            return None
        entry = mem.read_u64((table << PAGE_SHIFT) + ((va >> shift) & 511) * 8)
        if not entry & _P or (shift != 39 and entry & _PSE):
            return None
        table = entry_mfn(entry)
    if not mem.is_valid_mfn(table):
        return None
    return table, (va >> PAGE_SHIFT) & 511


def update_va_mapping(m, va: int, val: int, flags: int, pg_owner: int, op: str) -> int:
    mmu = m.mmu
    pt = mmu.pt
    pt.begin()
    rc = _update_va(m, va, val, pg_owner)
    if rc:
        mmu.reject(op, rc)
        return rc
    kind = flags & X.UVMF_FLUSHTYPE_MASK
    if kind in (X.UVMF_TLB_FLUSH, X.UVMF_INVLPG):
        bmap = flags & ~X.UVMF_FLUSHTYPE_MASK
        flush = True
        if bmap not in (X.UVMF_LOCAL, X.UVMF_ALL):
            mask = m.guest.read_word(bmap)
            if mask is None:
                rc = -EFAULT
            flush = bool(mask and mask & 1)         # vCPU 0 is the only one
        if flush:
            m.flush_tlb()                           # Unicorn has no single-page invalidation
    return rc


def _update_va(m, va: int, val: int, pg_owner: int) -> int:
    pt = m.mmu.pt
    if pg_owner != m.domain.domid:
        return pt.refuse(-EPERM, f"d{m.domain.domid} may not map d{pg_owner}'s frames", new=val)
    found = map_guest_l1e(m, va)
    if found is None:
        return pt.refuse(-EINVAL, f"no L1 table maps va {va:#x} (no present, non-superpage L2 "
                         "entry for it)", new=val)
    l1mfn, index = found
    if not pt.get_page(l1mfn):
        return pt.refuse(-EINVAL, "the L1 table for the va is not the domain's: "
                         + pt.not_ours(l1mfn), l1mfn, index, new=val)
    try:
        if not pt.valid_table(l1mfn, T_L1):
            return pt.refuse(-EINVAL, f"the frame mapping va {va:#x} is not a validated L1 table "
                             f"(it is {type_name(int(pt.type[l1mfn]))})", l1mfn, index, new=val)
        return pt.mod_l1_entry(l1mfn, index, val, False, pg_owner)
    finally:
        pt.put_page(l1mfn)


def do_update_va_mapping(m, va: int, val: int, flags: int) -> int:
    return update_va_mapping(m, va, val, flags, m.domain.domid, "update_va_mapping")


def do_update_va_mapping32(m, va: int, val_lo: int, val_hi: int, flags: int) -> int:
    """The 32-bit ABI passes the 64-bit PAE entry in two registers."""
    return do_update_va_mapping(m, va, (val_hi & 0xFFFFFFFF) << 32 | (val_lo & 0xFFFFFFFF), flags)


def do_update_va_mapping_otherdomain(m, va: int, val: int, flags: int, domid: int) -> int:
    pg_owner = get_pg_owner(m, domid)
    if pg_owner is None:
        m.mmu.pt.begin()
        m.mmu.reject("update_va_mapping_otherdomain", -ESRCH,
                     f"no domain d{domid & 0xFFFF} (or the caller named itself)")
        return -ESRCH
    return update_va_mapping(m, va, val, flags, pg_owner, "update_va_mapping_otherdomain")


def do_update_va_mapping_otherdomain32(m, va: int, val_lo: int, val_hi: int, flags: int,
                                       domid: int) -> int:
    return do_update_va_mapping_otherdomain(
        m, va, (val_hi & 0xFFFFFFFF) << 32 | (val_lo & 0xFFFFFFFF), flags, domid)


__all__ = ["do_mmu_update", "do_update_va_mapping", "do_update_va_mapping32",
           "do_update_va_mapping_otherdomain", "do_update_va_mapping_otherdomain32",
           "get_pg_owner", "map_guest_l1e"]

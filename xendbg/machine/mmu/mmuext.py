"""``mmuext_op``: extended MMU operations (Xen's ``do_mmuext_op``).

``mmuext_op(op[], count, done, foreigndom)`` runs ``struct mmuext_op {cmd; arg1; arg2}`` entries in
order, stopping at the first failure (its error is the result); ``*done`` receives how many
completed, as for ``mmu_update``. ``foreigndom`` must be DOMID_SELF for an unprivileged domain
(``-ESRCH`` for no such domain or the caller's own id, ``-EPERM`` for another one).

=============================  ====================================================================
PIN_L1..L4_TABLE (arg1 mfn)    validate as that type and hold it (a 32-bit guest's PIN_L4 is
                               ignored, as Xen ignores levels its guests do not have)
UNPIN_TABLE                    drop the pin (``-EINVAL`` if not pinned)
NEW_BASEPTR                    switch the kernel's top-level table (an L4; a 32-bit guest's L3)
NEW_USER_BASEPTR               64-bit only: the user-mode L4 (0: none); ``-EINVAL`` on 32-bit
TLB_FLUSH_LOCAL/MULTI/ALL      flush; MULTI reads a vCPU bitmap at arg2 (``-EINVAL`` if unreadable)
INVLPG_LOCAL/MULTI/ALL         invalidate arg1 (xendbg flushes the whole TLB: Unicorn cannot do one
                               page), ignored for an address in Xen's hole
FLUSH_CACHE, _GLOBAL           ``-EACCES`` / ``-EINVAL``: a domU without devices may not
SET_LDT (arg1 va, arg2 ents)   page-aligned, guest address, at most 8192 entries; recorded (Xen maps
                               the LDT lazily on first use; xendbg loads no LDT into the CPU yet)
CLEAR_PAGE / COPY_PAGE         zero / copy a frame of the domain that can be typed writable now
MARK_SUPER, UNMARK_SUPER       ``-EOPNOTSUPP`` (superpages are not supported for PV)
=============================  ====================================================================
"""

from __future__ import annotations

import struct

from xendbg.machine.abi import xen as X
from xendbg.machine.abi.errno import EACCES, EFAULT, EINVAL, ENOSYS, EOPNOTSUPP, EPERM, ESRCH
from xendbg.machine.memory import PAGE_SHIFT

from ._validate import T_L1, T_L2, T_L3, T_L4, T_WRITABLE
from .mmu_update import MMU_UPDATE_PREEMPTED, get_pg_owner

PIN_TYPES = {X.MMUEXT_PIN_L1_TABLE: T_L1, X.MMUEXT_PIN_L2_TABLE: T_L2,
             X.MMUEXT_PIN_L3_TABLE: T_L3, X.MMUEXT_PIN_L4_TABLE: T_L4}
NAMES = {v: k for k, v in vars(X).items() if k.startswith("MMUEXT_") and isinstance(v, int)}
MAX_LDT_ENTRIES = 8192


def do_mmuext_op(m, ops: int, count: int, done_ptr: int, foreigndom: int) -> int:
    mmu = m.mmu
    count &= 0xFFFFFFFF
    done = 0
    if count & MMU_UPDATE_PREEMPTED:
        count &= ~MMU_UPDATE_PREEMPTED
        if done_ptr:
            done = m.guest.read_u32(done_ptr) or 0
    size = m.abi.mmuext_op_size
    if not m.guest.accessible(ops, count * size):
        return -EFAULT
    pg_owner = get_pg_owner(m, foreigndom)
    if pg_owner is None:
        return -ESRCH
    if pg_owner != m.domain.domid:
        return -EPERM                  # Xen's policy: an unprivileged domain acts on itself only
    fmt = "<I4xQQ" if m.abi.word == 8 else "<III"
    rc = 0
    i = 0
    while i < count:
        raw = m.guest.read(ops + i * size, size)
        if raw is None:
            rc = -EFAULT
            break
        cmd, arg1, arg2 = struct.unpack(fmt, raw)
        mmu.pt.begin()
        rc = mmuext(m, cmd, arg1, arg2)
        if rc:
            mmu.reject(f"mmuext_op[{i}] {NAMES.get(cmd, f'cmd {cmd}')}", rc)
            break
        i += 1
    if done_ptr:
        m.guest.write_u32(done_ptr, done + i)
    return rc


def _addr_ok(m, va: int) -> bool:
    return m.guest.accessible(va, 1)


def _vcpu_mask(m, ptr: int) -> int | None:
    """The first word of a vCPU bitmap (one vCPU: only bit 0 matters), None if unreadable."""
    return m.guest.read_word(ptr)


def mmuext(m, cmd: int, arg1: int, arg2: int) -> int:
    """One operation; 0 or -errno (the reason of a refusal is left in ``m.mmu.pt.why``)."""
    mmu = m.mmu
    pt = mmu.pt
    if cmd in PIN_TYPES:
        t = PIN_TYPES[cmd]
        if t > pt.levels:
            return 0                                 # "ignore pinning of invalid paging levels"
        return mmu.pin(arg1, t, f"{NAMES[cmd]} mfn {arg1:#x}")
    if cmd == X.MMUEXT_UNPIN_TABLE:
        return mmu.unpin(arg1)
    if cmd == X.MMUEXT_NEW_BASEPTR:
        return mmu.new_guest_cr3(arg1)
    if cmd == X.MMUEXT_NEW_USER_BASEPTR:
        if not m.is64:
            return pt.refuse(-EINVAL, "a 32-bit guest has no user base pointer")
        return mmu.new_user_baseptr(arg1)
    if cmd in (X.MMUEXT_TLB_FLUSH_LOCAL, X.MMUEXT_TLB_FLUSH_ALL):
        m.flush_tlb()
        return 0
    if cmd in (X.MMUEXT_INVLPG_LOCAL, X.MMUEXT_INVLPG_ALL):
        if _addr_ok(m, arg1):
            m.flush_tlb()
        return 0
    if cmd in (X.MMUEXT_TLB_FLUSH_MULTI, X.MMUEXT_INVLPG_MULTI):
        mask = _vcpu_mask(m, arg2)
        if mask is None:
            return pt.refuse(-EINVAL, f"cannot read the vCPU bitmap at {arg2:#x}")
        if mask & 1 and (cmd == X.MMUEXT_TLB_FLUSH_MULTI or _addr_ok(m, arg1)):
            m.flush_tlb()
        return 0
    if cmd == X.MMUEXT_FLUSH_CACHE:
        return pt.refuse(-EACCES, "cache flushes are for domains with device access")
    if cmd == X.MMUEXT_FLUSH_CACHE_GLOBAL:
        return pt.refuse(-EINVAL, "cache flushes are for domains with device access")
    if cmd == X.MMUEXT_SET_LDT:
        return _set_ldt(m, arg1, arg2 & 0xFFFFFFFF)
    if cmd == X.MMUEXT_CLEAR_PAGE:
        return _clear_page(m, arg1)
    if cmd == X.MMUEXT_COPY_PAGE:
        return _copy_page(m, arg1, arg2)
    if cmd in (X.MMUEXT_MARK_SUPER, X.MMUEXT_UNMARK_SUPER):
        return pt.refuse(-EOPNOTSUPP, "superpages are not supported")
    return pt.refuse(-ENOSYS, f"unknown mmuext_op command {cmd}")


def _set_ldt(m, va: int, ents: int) -> int:
    ptr = va if ents else 0
    if ptr & 0xFFF or (ptr and not _addr_ok(m, ptr)) or ents > MAX_LDT_ENTRIES:
        return m.mmu.pt.refuse(-EINVAL, f"bad LDT: base {va:#x} (page-aligned guest address "
                               f"needed), {ents} entries (at most {MAX_LDT_ENTRIES})")
    v = m.vcpu
    if (v.ldt_base, v.ldt_entries) != (ptr, ents):
        v.ldt_base, v.ldt_entries = ptr, ents
        m.flush_tlb()
    return 0


def _writable_frame(m, mfn: int, what: str) -> int:
    """A reference and a writable type on a frame of the domain, or -EINVAL."""
    pt = m.mmu.pt
    if not pt.get_page(mfn):
        return pt.refuse(-EINVAL, f"{what}: " + pt.not_ours(mfn), mfn)
    if pt.get_page_type(mfn, T_WRITABLE, what):
        pt.put_page(mfn)
        return -EINVAL
    return 0


def _clear_page(m, mfn: int) -> int:
    rc = _writable_frame(m, mfn, "MMUEXT_CLEAR_PAGE")
    if rc:
        return rc
    m.memory.clear_frame(mfn)
    m.cpu.flush_tb()
    m.mmu.pt.put_page_and_type(mfn)
    return 0


def _copy_page(m, mfn: int, src: int) -> int:
    pt = m.mmu.pt
    if not pt.get_page(src):
        return pt.refuse(-EINVAL, "MMUEXT_COPY_PAGE source: " + pt.not_ours(src), src)
    rc = _writable_frame(m, mfn, "MMUEXT_COPY_PAGE")
    if rc:
        pt.put_page(src)
        return rc
    m.memory.write(mfn << PAGE_SHIFT, m.memory.read(src << PAGE_SHIFT, 1 << PAGE_SHIFT))
    m.cpu.flush_tb()
    pt.put_page_and_type(mfn)
    pt.put_page(src)
    return 0

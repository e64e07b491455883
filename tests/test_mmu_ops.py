"""mmuext_op, descriptor pages and memory_op on built lab machines."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from xendbg.machine.abi import xen as X
from xendbg.machine.abi.errno import EACCES, EBUSY, EFAULT, EINVAL, ENOSYS, EOPNOTSUPP, EPERM, ESRCH
from xendbg.machine.mmu._validate import (
    F_PINNED,
    F_VALIDATED,
    T_L4,
    T_NONE,
    T_SEG_DESC,
    T_WRITABLE,
)

GUESTS = ["hello-pv64", "hello-pv32"]
P, RW, US, A, D = 1, 2, 4, 0x20, 0x40


@pytest.fixture(params=GUESTS)
def kit(request, mmu_kit):
    k = mmu_kit(request.param)
    yield k
    assert k.check() == []


def pte(mfn: int, flags: int = P | RW | A | D) -> int:
    return mfn << 12 | flags


def _copy_top_table(kit, share_pae_l2: bool = False) -> int:
    """A second top-level table with the same guest entries, made the way a guest makes one:
    written while it is plain data (then never mapped writable, so it can become a table). A
    32-bit L3 gets its own copy of the L2 with Xen's slots, which may not be shared."""
    m = kit.m
    pt = m.mmu.pt
    top = m.vcpu.guest_table
    (new,) = kit.spare()
    entries = m.memory.frame_u64(top).copy()
    if not kit.is64 and not share_pae_l2:
        old_l2 = int(entries[3]) >> 12
        (l2,) = kit.spare()
        for i, value in enumerate(m.memory.frame_u64(old_l2)[:pt.xen_l2_first].tolist()):
            if value:
                assert kit.mmu_update([((l2 << 12) + i * 8, value)]) == (0, 1)
        entries[3] = (l2 << 12) | (int(entries[3]) & 0xFFF)
    for i, value in enumerate(entries.tolist()):
        if value:
            assert kit.mmu_update([((new << 12) + i * 8, value)]) == (0, 1)
    return new


# -- pins and base pointers -----------------------------------------------------------------------------

def test_pin_switch_unpin_the_old_table_as_grub_does(kit):
    m = kit.m
    pt = m.mmu.pt
    old = m.vcpu.guest_table
    new = _copy_top_table(kit)
    root = pt.root_type
    pin = X.MMUEXT_PIN_L4_TABLE if kit.is64 else X.MMUEXT_PIN_L3_TABLE
    rc, done = kit.mmuext([(pin, new), (X.MMUEXT_NEW_BASEPTR, new), (X.MMUEXT_UNPIN_TABLE, old)])
    assert (rc, done) == (0, 3)
    assert m.vcpu.guest_table == new and m.cpu.cr3 >> 12 == new
    assert int(pt.type[new]) == root and pt.flags[new] & F_PINNED and pt.type_count[new] == 2
    assert pt.type_count[old] == 0 and not pt.flags[old] & (F_PINNED | F_VALIDATED)
    assert m.guest.read(m.layout.entry, 4) is not None          # still runs on the new table
    kinds = [r.kind for r in m.mmu.history.records if r.mfn in (old, new)]
    assert "pin" in kinds and "unpin" in kinds


def test_the_32bit_xen_l2_may_not_be_shared(mmu_kit):
    kit = mmu_kit("hello-pv32")
    new = _copy_top_table(kit, share_pae_l2=True)
    assert kit.mmuext([(X.MMUEXT_PIN_L3_TABLE, new)]) == (-EINVAL, 0)
    assert "may not be shared" in kit.m.mmu.history.rejections[-1].rule
    assert kit.check() == []


def test_pin_refusals(kit):
    m = kit.m
    top = m.vcpu.guest_table
    pin = X.MMUEXT_PIN_L4_TABLE if kit.is64 else X.MMUEXT_PIN_L3_TABLE
    assert kit.mmuext([(pin, top)]) == (-EINVAL, 0)                        # already pinned
    assert "already pinned" in m.mmu.history.rejections[-1].rule
    (data,) = kit.spare()
    assert kit.mmuext([(X.MMUEXT_UNPIN_TABLE, data)]) == (-EINVAL, 0)      # not pinned
    assert kit.mmuext([(X.MMUEXT_PIN_L1_TABLE, m.xen_area.m2p_mfns[0])]) == (-EINVAL, 0)
    # A frame mapped writable cannot become a table.
    stack = next(r for r in m.layout.regions if r.name == "boot stack")
    assert kit.mmuext([(X.MMUEXT_PIN_L1_TABLE, int(m.domain.p2m[stack.pfn]))]) == (-EINVAL, 0)
    # The done count stops at the failing op.
    assert kit.mmuext([(X.MMUEXT_TLB_FLUSH_LOCAL, 0), (pin, top)]) == (-EINVAL, 1)


def test_pinning_a_table_that_maps_itself_writable(kit):
    pt = kit.m.mmu.pt
    (l1,) = kit.spare()
    assert kit.mmu_update([((l1 << 12) + 5 * 8, pte(l1))]) == (0, 1)
    assert kit.mmuext([(X.MMUEXT_PIN_L1_TABLE, l1)]) == (-EBUSY, 0)
    why = kit.m.mmu.history.rejections[-1]
    assert why.mfn == l1 and why.index == 5 and "writable" in why.rule
    assert int(pt.type[l1]) == T_NONE and pt.type_count[l1] == 0    # validation undone
    # Read-only, it is fine (an L1 may map itself: it is then just a readable page).
    assert kit.mmu_update([((l1 << 12) + 5 * 8, pte(l1, P | A))]) == (0, 1)
    assert kit.mmuext([(X.MMUEXT_PIN_L1_TABLE, l1)]) == (0, 1)
    assert kit.mmuext([(X.MMUEXT_UNPIN_TABLE, l1)]) == (0, 1)


def test_linear_page_tables_only_read_only_and_same_level(mmu_kit):
    kit = mmu_kit("hello-pv64")
    m = kit.m
    top = m.vcpu.guest_table
    free_slot = next(i for i in range(255) if not m.memory.read_u64((top << 12) + i * 8))
    ma = (top << 12) + free_slot * 8
    assert kit.mmu_update([(ma, pte(top))])[0] == -EINVAL                   # RW: refused
    assert "read-only" in m.mmu.history.rejections[-1].rule
    assert kit.mmu_update([(ma, pte(top, P | A))]) == (0, 1)               # RO self-map
    assert m.mmu.pt.type_count[top] == 2                                   # no reference taken
    assert kit.check() == []
    assert kit.mmu_update([(ma, 0)]) == (0, 1)


def test_32bit_guest_rules(mmu_kit):
    kit = mmu_kit("hello-pv32")
    assert kit.mmuext([(X.MMUEXT_PIN_L4_TABLE, kit.spare()[0])]) == (0, 1)   # ignored level
    assert kit.mmuext([(X.MMUEXT_NEW_USER_BASEPTR, 0)]) == (-EINVAL, 0)
    assert kit.check() == []


def test_new_user_baseptr(mmu_kit):
    kit = mmu_kit("hello-pv64")
    m = kit.m
    user = _copy_top_table(kit)
    assert kit.mmuext([(X.MMUEXT_NEW_USER_BASEPTR, user)]) == (0, 1)
    assert m.vcpu.guest_table_user == user and int(m.mmu.pt.type[user]) == T_L4
    assert kit.check() == []
    assert kit.mmuext([(X.MMUEXT_NEW_USER_BASEPTR, 0)]) == (0, 1)
    assert m.mmu.pt.type_count[user] == 0


def test_write_cr3_is_new_baseptr(kit):
    m = kit.m
    new = _copy_top_table(kit)
    assert m.mmu.write_cr3(m.vcpu, m.abi.mfn_to_cr3(new))
    assert m.vcpu.guest_table == new and m.cpu.cr3 >> 12 == new
    stack = next(r for r in m.layout.regions if r.name == "boot stack")
    mapped_rw = int(m.domain.p2m[stack.pfn])
    assert not m.mmu.write_cr3(m.vcpu, m.abi.mfn_to_cr3(mapped_rw))      # → #GP
    assert m.mmu.history.rejections[-1].op == "mov to cr3"
    assert m.vcpu.guest_table == new


# -- the other mmuext commands ---------------------------------------------------------------------------

def test_flushes_ldt_and_refusals(kit):
    m = kit.m
    assert m.guest.write(kit.data_va, (1).to_bytes(kit.word, "little"))
    ok = [(X.MMUEXT_TLB_FLUSH_LOCAL, 0), (X.MMUEXT_TLB_FLUSH_ALL, 0),
          (X.MMUEXT_INVLPG_LOCAL, m.layout.entry), (X.MMUEXT_INVLPG_ALL, m.layout.entry),
          (X.MMUEXT_TLB_FLUSH_MULTI, 0, kit.data_va),
          (X.MMUEXT_INVLPG_MULTI, m.layout.entry, kit.data_va),
          (X.MMUEXT_SET_LDT, kit.scratch, 16)]
    assert kit.mmuext(ok) == (0, len(ok))
    assert (m.vcpu.ldt_base, m.vcpu.ldt_entries) == (kit.scratch, 16)
    for op, err in [((X.MMUEXT_TLB_FLUSH_MULTI, 0, 0x10), -EINVAL),
                    ((X.MMUEXT_FLUSH_CACHE, 0), -EACCES),
                    ((X.MMUEXT_FLUSH_CACHE_GLOBAL, 0), -EINVAL),
                    ((X.MMUEXT_SET_LDT, kit.scratch + 8, 1), -EINVAL),
                    ((X.MMUEXT_SET_LDT, kit.scratch, 8193), -EINVAL),
                    ((X.MMUEXT_MARK_SUPER, 0), -EOPNOTSUPP),
                    ((X.MMUEXT_UNMARK_SUPER, 0), -EOPNOTSUPP),
                    ((14, 0), -ENOSYS)]:
        assert kit.mmuext([op]) == (err, 0), op


def test_clear_and_copy_page(kit):
    m = kit.m
    src, dst = kit.spare(2)
    m.memory.write(src << 12, b"\x5a" * 4096)
    m.memory.write(dst << 12, b"\x11" * 4096)
    assert kit.mmuext([(X.MMUEXT_COPY_PAGE, dst, src)]) == (0, 1)
    assert m.memory.read(dst << 12, 4096) == b"\x5a" * 4096
    assert kit.mmuext([(X.MMUEXT_CLEAR_PAGE, dst)]) == (0, 1)
    assert m.memory.read(dst << 12, 4096) == bytes(4096)
    top = m.vcpu.guest_table
    assert kit.mmuext([(X.MMUEXT_CLEAR_PAGE, top)]) == (-EINVAL, 0)         # a table in use
    assert kit.mmuext([(X.MMUEXT_COPY_PAGE, dst, m.xen_area.m2p_mfns[0])]) == (-EINVAL, 0)


@pytest.mark.parametrize("foreigndom, err", [(1, -ESRCH), (0, -EPERM), (X.DOMID_IO, -EPERM),
                                             (0x4321, -ESRCH)])
def test_mmuext_foreign_domains(kit, foreigndom, err):
    assert kit.mmuext([(X.MMUEXT_TLB_FLUSH_LOCAL, 0)], foreigndom=foreigndom)[0] == err


# -- descriptor pages ------------------------------------------------------------------------------------

def _set_gdt(kit, frames: list[int], entries: int) -> int:
    data = b"".join(f.to_bytes(kit.word, "little") for f in frames)
    assert kit.m.guest.write(kit.data_va, data)
    return kit.hc("set_gdt", kit.data_va, entries)


def test_gdt_frames_are_descriptor_pages(kit):
    m = kit.m
    pt = m.mmu.pt
    gdt, other = kit.spare(2)
    assert _set_gdt(kit, [gdt], 16) == 0
    assert int(pt.type[gdt]) == T_SEG_DESC and pt.type_count[gdt] == 1
    assert kit.check() == []
    # Now it cannot be mapped writable, nor be a page table.
    va = kit.free_va()
    (l1,) = kit.spare()
    assert kit.mmu_update([(kit.entry_ma(va, 2), pte(l1, P | RW | US | A | D))]) == (0, 1)
    assert kit.mmu_update([(kit.entry_ma(va, 1), pte(gdt))])[0] == -EBUSY
    assert kit.mmu_update([(kit.entry_ma(va, 1), pte(gdt, P | A))]) == (0, 1)
    # update_descriptor writes into it (checked), and refuses a page table in use.
    desc = 0x00CFFA000000FFFF
    assert kit.hc("update_descriptor", *(_split(kit, gdt << 12 | 8) + _split(kit, desc))) == 0
    assert m.memory.read_u64((gdt << 12) + 8) & 0xFFFFFFFF == 0xFFFF
    assert kit.hc("update_descriptor",
                  *(_split(kit, m.vcpu.guest_table << 12) + _split(kit, 0))) == -EINVAL
    # Replacing the GDT releases the old frame.
    assert _set_gdt(kit, [other], 16) == 0
    assert pt.type_count[gdt] == 0 and int(pt.type[other]) == T_SEG_DESC
    # A frame mapped writable cannot become a GDT frame.
    stack = next(r for r in m.layout.regions if r.name == "boot stack")
    assert _set_gdt(kit, [int(m.domain.p2m[stack.pfn])], 16) == -EINVAL


def _split(kit, value: int) -> tuple[int, ...]:
    return (value,) if kit.is64 else (value & 0xFFFFFFFF, value >> 32)


# -- memory_op -------------------------------------------------------------------------------------------

def _reservation(kit, op: int, extents: list[int], order: int = 0, domid: int = X.DOMID_SELF,
                 mem_flags: int = 0) -> int:
    m = kit.m
    word = kit.word
    ext_va = kit.data_va + 0x40
    assert m.guest.write(ext_va, b"".join(e.to_bytes(word, "little") for e in extents))
    fmt = "<QQIIH" if word == 8 else "<IIIIH"
    assert m.guest.write(kit.data_va, struct.pack(fmt, ext_va, len(extents), order, mem_flags,
                                                  domid))
    return kit.hc("memory_op", op, kit.data_va)


def _extents(kit, n: int) -> list[int]:
    raw = kit.m.guest.read(kit.data_va + 0x40, n * kit.word)
    return [int.from_bytes(raw[i * kit.word:(i + 1) * kit.word], "little") for i in range(n)]


def test_reservation_counts_and_memory_map(kit):
    m = kit.m
    nr = m.domain.nr_pages
    assert m.guest.write(kit.data_va, struct.pack("<H", X.DOMID_SELF))
    assert kit.hc("memory_op", X.XENMEM_current_reservation, kit.data_va) == nr
    assert kit.hc("memory_op", X.XENMEM_maximum_reservation, kit.data_va) == nr
    assert kit.hc("memory_op", X.XENMEM_maximum_ram_page, 0) == m.memory.nr_frames
    assert m.guest.write(kit.data_va, struct.pack("<H", 0))
    assert kit.hc("memory_op", X.XENMEM_current_reservation, kit.data_va) == -EPERM
    assert m.guest.write(kit.data_va, struct.pack("<H", 77))
    assert kit.hc("memory_op", X.XENMEM_maximum_reservation, kit.data_va) == -ESRCH
    # The E820: one RAM entry covering the domain's memory.
    buf = kit.data_va + 0x100
    hdr = struct.pack("<I", 4) + bytes(kit.word - 4) + buf.to_bytes(kit.word, "little")
    assert m.guest.write(kit.data_va, hdr)
    assert kit.hc("memory_op", X.XENMEM_memory_map, kit.data_va) == 0
    assert m.guest.read_u32(kit.data_va) == 1
    assert struct.unpack("<QQI", m.guest.read(buf, 20)) == (0, nr << 12, 1)


def test_machphys_mapping_and_mfn_list(kit):
    m = kit.m
    abi = m.abi
    assert kit.hc("memory_op", X.XENMEM_machphys_mapping, kit.data_va) == 0
    fmt = "<3Q" if kit.word == 8 else "<3I"
    v_start, v_end, max_mfn = struct.unpack(fmt, m.guest.read(kit.data_va, 3 * kit.word))
    assert (v_start, v_end) == (abi.m2p_start, abi.m2p_end)
    assert max_mfn == (abi.m2p_end - abi.m2p_start) // abi.m2p_entry - 1
    # The M2P is readable there by the guest, and says what the p2m says.
    pfn = 3
    mfn = int(m.domain.p2m[pfn])
    ma = m.guest.translate(abi.m2p_start + mfn * abi.m2p_entry)      # the CPU's walk
    assert int.from_bytes(m.memory.read(ma, abi.m2p_entry), "little") == pfn
    out = kit.data_va + 0x100
    word = kit.word
    arg = struct.pack("<I", 8) + bytes(word - 4) + out.to_bytes(word, "little") + bytes(word)
    assert m.guest.write(kit.data_va, arg)
    assert kit.hc("memory_op", X.XENMEM_machphys_mfn_list, kit.data_va) == 0
    n = m.guest.read_u32(kit.data_va + 2 * word)
    assert n >= 1 and int.from_bytes(m.guest.read(out, word), "little") == m.xen_area.m2p_mfns[0]


def test_decrease_then_populate(kit):
    m = kit.m
    mmu = m.mmu
    nr = m.domain.nr_pages
    pfn = nr - 2
    mfn = int(m.domain.p2m[pfn])
    assert _reservation(kit, X.XENMEM_decrease_reservation, [mfn]) == 1
    assert int(m.memory.owner[mfn]) == X.DOMID_INVALID
    assert int(m.layout.m2p[mfn]) == mmu.m2p_invalid and m.domain.p2m[pfn] == np.uint64(2**64 - 1)
    assert mmu.tot_pages == nr - 1
    # A frame still mapped is given back only when its last mapping goes.
    busy = int(m.domain.p2m[1])                          # the kernel's second page
    assert _reservation(kit, X.XENMEM_decrease_reservation, [busy]) == 1
    assert int(m.memory.owner[busy]) == m.domain.domid and mmu.tot_pages == nr - 1
    # Not its frame: nothing done.
    assert _reservation(kit, X.XENMEM_decrease_reservation, [m.xen_area.m2p_mfns[0]]) == 0
    # Populate the hole again.
    assert _reservation(kit, X.XENMEM_populate_physmap, [pfn]) == 1
    (new,) = _extents(kit, 1)
    assert int(m.memory.owner[new]) == m.domain.domid and int(m.layout.m2p[new]) == pfn
    assert int(m.domain.p2m[pfn]) == new and mmu.tot_pages == nr
    # At max_pages: no more.
    assert _reservation(kit, X.XENMEM_increase_reservation, [0]) == 0
    assert _reservation(kit, X.XENMEM_populate_physmap, [pfn], domid=0) == 0


def test_increase_reservation_and_orders(kit):
    m = kit.m
    a, b = kit.spare(2)
    assert _reservation(kit, X.XENMEM_decrease_reservation, [a, b]) == 2
    assert _reservation(kit, X.XENMEM_increase_reservation, [0, 0]) == 2
    got = _extents(kit, 2)
    assert all(int(m.memory.owner[f]) == m.domain.domid for f in got)
    assert m.mmu.pt.count[got[0]] == 1 and int(m.mmu.pt.type[got[0]]) == T_NONE
    assert _reservation(kit, X.XENMEM_increase_reservation, [0], order=10) == 0   # > max order


def test_add_to_physmap(kit):
    m = kit.m
    word = kit.word
    fmt = "<HHIQQ" if word == 8 else "<HHIII"
    assert m.guest.write(kit.data_va, struct.pack(fmt, X.DOMID_SELF, 0, 0, 0, 0x77))
    assert kit.hc("memory_op", X.XENMEM_add_to_physmap, kit.data_va) == 0
    assert int(m.layout.m2p[m.domain.shared_info_mfn]) == 0x77
    assert m.guest.write(kit.data_va, struct.pack(fmt, X.DOMID_SELF, 0, 0, 1, 0x77))
    assert kit.hc("memory_op", X.XENMEM_add_to_physmap, kit.data_va) == -EINVAL
    assert m.guest.write(kit.data_va, struct.pack(fmt, 0, 0, 0, 0, 0x77))
    assert kit.hc("memory_op", X.XENMEM_add_to_physmap, kit.data_va) == -EPERM
    assert m.guest.write(kit.data_va, struct.pack(fmt, X.DOMID_SELF, 0, 2, 0, 0x77))
    assert kit.hc("memory_op", X.XENMEM_add_to_physmap, kit.data_va) == -ENOSYS
    assert kit.hc("memory_op", X.XENMEM_add_to_physmap, 0) == -EFAULT
    assert kit.hc("memory_op", X.XENMEM_exchange, kit.data_va) == -ENOSYS


def test_grant_frames_go_to_the_grant_table(kit):
    m = kit.m
    calls = []

    class FakeGrantTable:
        frames: list[int] = []

        def add_to_physmap(self, idx, gpfn):
            calls.append((idx, gpfn))
            return 0

    m.grant_table = FakeGrantTable()
    fmt = "<HHIQQ" if kit.word == 8 else "<HHIII"
    assert m.guest.write(kit.data_va, struct.pack(fmt, X.DOMID_SELF, 0, 1, 2, 0x99))
    assert kit.hc("memory_op", X.XENMEM_add_to_physmap, kit.data_va) == 0
    assert calls == [(2, 0x99)]
    del m.grant_table
    assert kit.hc("memory_op", X.XENMEM_add_to_physmap, kit.data_va) == -ENOSYS


def test_writable_types_for_xen_heap_pages(kit):
    m = kit.m
    si = m.domain.shared_info_mfn
    assert int(m.mmu.pt.type[si]) == T_WRITABLE and m.mmu.pt.type_count[si] == 1
    assert kit.mmuext([(X.MMUEXT_PIN_L1_TABLE, si)]) == (-EINVAL, 0)
    assert _reservation(kit, X.XENMEM_decrease_reservation, [si]) == 0
    assert kit.hc("memory_op", 63, 0) == -ENOSYS

"""The PV MMU on built lab machines: start of day, mmu_update, update_va_mapping, history.

Hypercalls are made through ``m.dispatch`` with their arguments in guest memory (``mmu_kit`` in
conftest), exactly as the guest's own calls arrive; after each test the invariant checker must find
nothing wrong.
"""

from __future__ import annotations

import pytest

from xendbg.machine.abi import xen as X
from xendbg.machine.abi.errno import EBUSY, EINVAL, ENOSYS, EPERM, ESRCH
from xendbg.machine.mmu import page_types as PT
from xendbg.machine.mmu._validate import F_PINNED, F_VALIDATED, T_L1, T_WRITABLE

GUESTS = ["hello-pv64", "hello-pv32"]
P, RW, US, A, D, PSE = 1, 2, 4, 0x20, 0x40, 0x80
NX = 1 << 63


@pytest.fixture(params=GUESTS)
def kit(request, mmu_kit):
    k = mmu_kit(request.param)
    yield k
    assert k.check() == []


def pte(mfn: int, flags: int = P | RW | A | D) -> int:
    return mfn << 12 | flags


# -- start of day ----------------------------------------------------------------------------------

def test_start_of_day_tables_are_typed_pinned_and_referenced(kit):
    m, pt = kit.m, kit.m.mmu.pt
    top = m.layout.pt_base_mfn
    assert m.vcpu.guest_table == top and m.cpu.cr3 >> 12 == top
    assert pt.flags[top] & F_PINNED and pt.flags[top] & F_VALIDATED
    assert int(pt.type[top]) == pt.root_type
    assert pt.type_count[top] == 2                  # the pin and the base pointer
    levels = {level for level, _ in m.layout.pt_frames}
    for level, mfn in m.layout.pt_frames:
        t = int(pt.type[mfn]) & 0xF
        assert t == level and pt.flags[mfn] & F_VALIDATED
    if not kit.is64:                                # the top-GiB L2 holds Xen's slots
        assert "L2(pae_xen)" in m.mmu.tables()
    assert levels == set(range(1, m.abi.page_levels + 1))
    # Every data page the bootstrap maps writable has a writable type; the tables are mapped RO.
    stack = next(r for r in m.layout.regions if r.name == "boot stack")
    stack_mfn = int(m.domain.p2m[stack.pfn])
    assert int(pt.type[stack_mfn]) == T_WRITABLE and pt.type_count[stack_mfn] == 1
    assert pt.count[stack_mfn] == 2                 # allocated + one mapping
    assert m.mmu.history.pinned_by[top].why.startswith("start of day")


def test_64bit_entries_get_the_user_bit(mmu_kit):
    kit = mmu_kit("hello-pv64")
    entry = kit.m.memory.read_u64(kit.entry_ma(kit.m.layout.entry, 1))
    assert entry & US


# -- mmu_update --------------------------------------------------------------------------------------

def _install_l1(kit) -> tuple[int, int]:
    """A new L1 under the L2 entry of ``kit.free_va()``: (va, l1 mfn)."""
    va = kit.free_va()
    (l1,) = kit.spare()
    rc, done = kit.mmu_update([(kit.entry_ma(va, 2), pte(l1, P | RW | US | A | D))])
    assert (rc, done) == (0, 1)
    return va, l1


def test_new_l1_then_map_and_unmap_a_frame(kit):
    pt = kit.m.mmu.pt
    va, l1 = _install_l1(kit)
    assert int(pt.type[l1]) == T_L1 and pt.type_count[l1] == 1
    (data,) = kit.spare()
    rc, done = kit.mmu_update([(kit.entry_ma(va, 1), pte(data))])
    assert (rc, done) == (0, 1)
    assert int(pt.type[data]) == T_WRITABLE and pt.type_count[data] == 1 and pt.count[data] == 2
    assert kit.m.guest.write(va, b"mapped")                 # the CPU's walk agrees
    assert kit.m.memory.read(data << 12, 6) == b"mapped"
    assert kit.check() == []
    rc, _ = kit.mmu_update([(kit.entry_ma(va, 1), 0)])
    assert rc == 0 and pt.type_count[data] == 0 and pt.count[data] == 1
    # Removing the L2 entry drops the last type reference: the L1 is devalidated.
    rc, _ = kit.mmu_update([(kit.entry_ma(va, 2), 0)])
    assert rc == 0 and pt.type_count[l1] == 0 and not pt.flags[l1] & F_VALIDATED


def test_writable_mapping_of_a_page_table_is_refused_and_explained(kit):
    m = kit.m
    va, _l1 = _install_l1(kit)
    events = []
    m.listeners.append(lambda e: events.append(e) if e.kind == "mmu_reject" else None)
    table = m.layout.pt_base_mfn
    ma = kit.entry_ma(va, 1)
    rc, done = kit.mmu_update([(ma, pte(table))])
    assert (rc, done) == (-EBUSY, 0)
    why = m.mmu.history.rejections[-1]
    assert why.mfn == ma >> 12 and why.index == (ma & 0xFFF) >> 3 and why.new == pte(table)
    assert "writable" in why.rule and why.op == "mmu_update[0]"
    assert events and events[-1].data["error"] == "-EBUSY" and events[-1].data["mfn"] == ma >> 12
    # Read-only is fine.
    assert kit.mmu_update([(ma, pte(table, P | A))]) == (0, 1)


@pytest.mark.parametrize("case", ["xen", "other", "free", "mmio", "invalid"])
def test_mapping_frames_the_domain_does_not_own(kit, case):
    m = kit.m
    va, _ = _install_l1(kit)
    owner = m.memory.owner
    if case == "xen":
        mfn, err = m.xen_area.m2p_mfns[0], -EBUSY           # Xen's read-only M2P included
    elif case == "other":
        mfn, err = int((owner == 0).nonzero()[0][0]), -EBUSY
    elif case == "free":
        mfn, err = int((owner == X.DOMID_INVALID).nonzero()[0][-1]), -EBUSY
    elif case == "mmio":
        mfn, err = m.memory.nr_frames + 10, -EPERM
    else:
        mfn, err = (1 << 40) - 1, -EINVAL
    rc, done = kit.mmu_update([(kit.entry_ma(va, 1), pte(mfn, P | A))])
    assert (rc, done) == (err, 0)


@pytest.mark.parametrize("level, bits, err", [
    (1, 1 << 7, -EINVAL),          # PAT
    (1, 1 << 4, -EINVAL),          # PCD
    (2, PSE, -EINVAL),             # superpage
    (2, 1 << 8, -EINVAL),          # G is an L1 bit only
])
def test_disallowed_bits(kit, level, bits, err):
    va, l1 = _install_l1(kit)
    (data,) = kit.spare()
    target = data if level == 1 else l1
    rc, _ = kit.mmu_update([(kit.entry_ma(va, level), pte(target, P | A | bits))])
    assert rc == err
    assert "disallowed" in kit.m.mmu.history.rejections[-1].rule


def test_xen_slots_are_not_the_guests(kit):
    m = kit.m
    pt = m.mmu.pt
    top = m.vcpu.guest_table
    if kit.is64:
        ma, err = (top << 12) + 256 * 8, -EINVAL
    else:
        l2 = kit.path(0xFFC00000)[1][1]
        ma, err = (l2 << 12) + pt.xen_l2_first * 8, -EPERM
    before = m.memory.read_u64(ma)
    rc, _ = kit.mmu_update([(ma, 0)])
    assert rc == err and m.memory.read_u64(ma) == before
    if not kit.is64:            # and the L3's slot 3 (the L2 with Xen's slots) is fixed
        rc, _ = kit.mmu_update([((top << 12) + 3 * 8, 0)])
        assert rc == -EINVAL


def test_done_counts_completed_requests_and_stops_at_the_failure(kit):
    va, _ = _install_l1(kit)
    a, b = kit.spare(2)
    ma = kit.entry_ma(va, 1)
    reqs = [(ma, pte(a)), (ma + 8, pte(kit.m.layout.pt_base_mfn)), (ma + 16, pte(b))]
    assert kit.mmu_update(reqs) == (-EBUSY, 1)
    assert kit.m.memory.read_u64(ma + 16) == 0                  # never reached
    # A restarted (preempted) call adds to the count already in *done.
    kit.m.guest.write_u32(kit.done_va, 5)
    rc = kit.hc("mmu_update", kit.arg_va, 1 | 1 << 31, kit.done_va, X.DOMID_SELF)
    assert rc == 0 and kit.m.guest.read_u32(kit.done_va) == 6


def test_preserve_ad_and_the_fast_path(kit):
    m = kit.m
    va, _ = _install_l1(kit)
    (data,) = kit.spare()
    ma = kit.entry_ma(va, 1)
    assert kit.mmu_update([(ma, pte(data, P | RW | A | D))]) == (0, 1)
    assert kit.mmu_update([(ma | X.MMU_PT_UPDATE_PRESERVE_AD, pte(data, P | RW))]) == (0, 1)
    assert m.memory.read_u64(ma) & (A | D) == A | D
    assert kit.mmu_update([(ma, pte(data, P | RW))]) == (0, 1)
    assert m.memory.read_u64(ma) & (A | D) == 0
    assert m.mmu.pt.type_count[data] == 1                       # the fast path took no new ref


def test_machphys_update_and_unknown_commands(kit):
    m = kit.m
    (data,) = kit.spare()
    assert kit.mmu_update([(data << 12 | X.MMU_MACHPHYS_UPDATE, 0x1234)]) == (0, 1)
    assert int(m.layout.m2p[data]) == 0x1234
    xen = m.xen_area.m2p_mfns[0]
    assert kit.mmu_update([(xen << 12 | X.MMU_MACHPHYS_UPDATE, 1)])[0] == -EINVAL
    assert kit.mmu_update([(data << 12 | 5, 0)])[0] == -ENOSYS


def test_plain_data_frames_are_written_through_a_writable_type(kit):
    m = kit.m
    (data,) = kit.spare()
    assert kit.mmu_update([((data << 12) + 8, 0xDEADBEEF)]) == (0, 1)
    assert m.memory.read_u64((data << 12) + 8) == 0xDEADBEEF
    assert int(m.mmu.pt.type[data]) == T_WRITABLE and m.mmu.pt.type_count[data] == 0
    # A frame of another domain is refused.
    other = int((m.memory.owner == 0).nonzero()[0][0])
    assert kit.mmu_update([(other << 12, 1)])[0] == -EINVAL


@pytest.mark.parametrize("foreigndom, err", [
    (1, -ESRCH),                        # its own id, named explicitly
    (0, -EPERM),                        # another domain: Xen's policy refuses
    (X.DOMID_XEN, -EPERM),
    (0x1234, -ESRCH),                   # no such domain
    (X.DOMID_SELF | 2 << 16, 0),        # PFD = itself + 1
    (X.DOMID_SELF | 1 << 16, -EPERM),   # PFD = dom0 + 1
    (X.DOMID_SELF | 9 << 16, -ESRCH),
])
def test_foreign_domains(kit, foreigndom, err):
    va, _ = _install_l1(kit)
    (data,) = kit.spare()
    rc, done = kit.mmu_update([(kit.entry_ma(va, 1), pte(data))], foreigndom=foreigndom)
    assert rc == err and done == (1 if err == 0 else 0)


# -- update_va_mapping --------------------------------------------------------------------------------

def test_update_va_mapping_maps_flushes_and_unmaps(kit):
    m = kit.m
    va, _ = _install_l1(kit)
    (data,) = kit.spare()
    for flags in (X.UVMF_NONE, X.UVMF_INVLPG, X.UVMF_TLB_FLUSH, X.UVMF_TLB_FLUSH | X.UVMF_ALL,
                  X.UVMF_INVLPG | X.UVMF_ALL):
        assert kit.uvm(va, pte(data), flags) == 0
        assert m.guest.translate(va, True) == data << 12
    # UVMF_MULTI: flags carry a pointer to a vCPU bitmap.
    assert m.guest.write(kit.data_va, (1).to_bytes(kit.word, "little"))
    assert kit.uvm(va, pte(data, P | A), X.UVMF_INVLPG | kit.data_va) == 0
    assert m.guest.translate(va, True) is None
    # An unreadable bitmap: the update is made, the result says -EFAULT.
    unmapped = kit.free_va() + 0x40000000 if kit.is64 else 0x1000
    assert kit.uvm(va, 0, X.UVMF_TLB_FLUSH | unmapped) == -14
    assert m.guest.translate(va) is None


def test_update_va_mapping_needs_an_l1(kit):
    (data,) = kit.spare()
    assert kit.uvm(kit.free_va(), pte(data)) == -EINVAL
    why = kit.m.mmu.history.rejections[-1]
    assert "no L1 table maps" in why.rule and why.op == "update_va_mapping"


def test_update_va_mapping_otherdomain(kit):
    va, _ = _install_l1(kit)
    (data,) = kit.spare()
    if kit.is64:
        def call(domid):
            return kit.hc("update_va_mapping_otherdomain", va, pte(data), 0, domid)
    else:
        def call(domid):
            return kit.hc("update_va_mapping_otherdomain", va, pte(data), 0, 0, domid)
    assert call(X.DOMID_SELF) == 0
    assert call(1) == -ESRCH
    assert call(0) == -EPERM
    assert call(X.DOMID_IO) == -EPERM


# -- page types and the history ------------------------------------------------------------------------

def test_type_changes_are_recorded_with_instruction_count_and_ip(kit):
    m = kit.m
    seen = []
    m.listeners.append(lambda e: seen.append(e.data) if e.kind == "page_type" else None)
    va, l1 = _install_l1(kit)
    changes = [r for r in m.mmu.history.of_frame(l1) if r.kind == "type"]
    assert changes and changes[-1].new == "L1" and changes[-1].ip == m.cpu.ip
    assert any(d["mfn"] == l1 and d["new"] == "L1" for d in seen)
    info = m.mmu.frame_info(l1)
    assert info["type"] == "L1" and info["type_count"] == 1 and info["validated"]


def test_page_type_names_cover_the_types():
    assert PT.type_name(PT.T_L2 | PT.T_PAE_XEN_L2) == "L2(pae_xen)"
    assert PT.type_name(PT.T_SEG_DESC) == "seg_desc"

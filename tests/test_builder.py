"""The domain builder: machine layout, p2m/M2P, start-of-day layout, start_info, page tables."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from xendbg.fast.walk import WALK_OK, walk
from xendbg.machine.abi.layout import PV32, PV64
from xendbg.machine.builder import BuildConfig, BuildError, build_domain
from xendbg.machine.memory import PAGE_SHIFT

GUESTS = ["hello-pv64", "hello-pv32"]


@pytest.mark.parametrize("name", GUESTS)
def test_layout_order_and_alignment(lab_machine, name):
    m = lab_machine(name)
    names = [r.name for r in m.layout.regions]
    assert names == ["kernel", "p2m", "start_info", "xenstore", "console", "page tables",
                     "boot stack"]
    va = m.layout.regions[0].va
    for region in m.layout.regions:
        assert region.va == va, f"{region.name} is not right after the previous region"
        assert region.pfn == (region.va - m.domain.virt_base) >> PAGE_SHIFT
        va += region.pages << PAGE_SHIFT
    end = m.layout.mapped_end_va
    assert end % (4 << 20) == 0
    assert end - va >= 512 << 10, "at least 512 KiB of padding after the last element"


@pytest.mark.parametrize("name", GUESTS)
def test_start_info_fields(lab_machine, name):
    m = lab_machine(name, cmdline="console=hvc0 hello")
    abi = m.abi
    si = abi.start_info
    raw = m.guest.read(m.layout.start_info_va, si.size)
    word = "<Q" if abi.word == 8 else "<I"

    def get(off, fmt=word):
        return struct.unpack_from(fmt, raw, off)[0]

    assert raw.startswith(abi.magic + b"\0")
    assert get(si.nr_pages) == m.domain.nr_pages == 16 << 8
    assert get(si.shared_info) == m.domain.shared_info_mfn << PAGE_SHIFT
    assert get(si.flags, "<I") == 0
    assert get(si.store_mfn) == m.domain.store_mfn
    assert get(si.console_mfn) == m.domain.console_mfn
    assert get(si.store_evtchn, "<I") == 1 and get(si.console_evtchn, "<I") == 2
    pt = next(r for r in m.layout.regions if r.name == "page tables")
    assert get(si.pt_base) == pt.va and get(si.nr_pt_frames) == pt.pages
    p2m = next(r for r in m.layout.regions if r.name == "p2m")
    assert get(si.mfn_list) == p2m.va
    assert raw[si.cmd_line:].split(b"\0")[0] == b"console=hvc0 hello"
    # The store and console pages are the ones the layout says, by mfn.
    store = next(r for r in m.layout.regions if r.name == "xenstore")
    assert m.domain.pfn_to_mfn(store.pfn) == m.domain.store_mfn


@pytest.mark.parametrize("name", GUESTS)
def test_p2m_is_not_identity_and_m2p_inverts_it(lab_machine, name):
    m = lab_machine(name)
    p2m = m.domain.p2m
    assert np.any(p2m != np.arange(len(p2m), dtype=np.uint64))
    assert len(set(p2m.tolist())) == len(p2m)
    m2p = m.layout.m2p
    assert np.array_equal(m2p[p2m.astype(np.int64)], np.arange(len(p2m)))
    # Frames are interleaved with Xen's and another domain's.
    owners = set(m.memory.owner.tolist())
    assert {0x7FF2, 0, m.domain.domid} <= owners
    # The guest's copy of the p2m list says the same.
    p2m_va = m.layout.p2m_va
    fmt = "<u8" if m.abi.word == 8 else "<u4"
    guest_copy = np.frombuffer(m.guest.read(p2m_va, len(p2m) * m.abi.word), dtype=fmt)
    assert np.array_equal(guest_copy, p2m)


def test_linear_p2m_option(lab_machine):
    m = lab_machine("hello-pv64", p2m="linear")
    p2m = m.domain.p2m.astype(np.int64)
    assert np.all(np.diff(p2m)[np.diff(p2m) != 1] > 1)   # ascending, with gaps between chunks


@pytest.mark.parametrize("name", GUESTS)
def test_page_tables_map_the_region(lab_machine, name):
    m = lab_machine(name)
    cr3 = m.layout.pt_base_mfn << PAGE_SHIFT
    levels = m.abi.page_levels
    pt = next(r for r in m.layout.regions if r.name == "page tables")
    pt_pfns = range(pt.pfn, pt.pfn + pt.pages)
    for pfn in range(0, (m.layout.mapped_end_va - m.domain.virt_base) >> PAGE_SHIFT):
        va = m.domain.virt_base + (pfn << PAGE_SHIFT)
        status, ma, perms, _ = walk(m.memory.bytes, cr3, va, levels)
        assert status == WALK_OK, hex(va)
        assert ma >> PAGE_SHIFT == m.domain.pfn_to_mfn(pfn)
        writable = bool(perms & 1)
        assert writable == (pfn not in pt_pfns), f"pfn {pfn:#x}: page tables must be read-only"
        if m.abi.bits == 64:
            assert perms & 2, "a 64-bit PV kernel runs in ring 3: its mappings are user"
    # Every bootstrap table frame is one of the guest's page-table pfns.
    table_mfns = {mfn for _level, mfn in m.layout.pt_frames}
    assert table_mfns == {m.domain.pfn_to_mfn(p) for p in pt_pfns}
    # Below the kernel nothing is mapped.
    assert walk(m.memory.bytes, cr3, 0x1000, levels)[0] != WALK_OK


@pytest.mark.parametrize("name", GUESTS)
def test_m2p_visible_read_only_at_the_abi_address(lab_machine, name):
    m = lab_machine(name)
    cr3 = m.layout.pt_base_mfn << PAGE_SHIFT
    abi = m.abi
    status, ma, perms, _ = walk(m.memory.bytes, cr3, abi.m2p_start, abi.page_levels)
    assert status == WALK_OK and not perms & 1
    mfn = m.domain.store_mfn
    entry_va = abi.m2p_start + mfn * abi.m2p_entry
    status, ma, _, _ = walk(m.memory.bytes, cr3, entry_va, abi.page_levels)
    assert status == WALK_OK
    value = int.from_bytes(m.memory.read(ma, abi.m2p_entry), "little")
    assert value == next(r.pfn for r in m.layout.regions if r.name == "xenstore")


def test_hypercall_page_holds_xen_stubs(lab_machine):
    m = lab_machine("hello-pv64")
    page = m.guest.read(m.domain.hypercall_page_va, 4096)
    assert page[17 * 32:17 * 32 + 11] == bytes.fromhex("51 41 53 b8 11 00 00 00 0f 05 41")
    assert page[23 * 32:23 * 32 + 11] == bytes.fromhex("51 41 53 50 b8 17 00 00 00 0f 05")
    m32 = lab_machine("hello-pv32")
    page = m32.guest.read(m32.domain.hypercall_page_va, 4096)
    assert page[17 * 32:17 * 32 + 8] == bytes.fromhex("b8 11 00 00 00 cd 82 c3")
    assert page[23 * 32:23 * 32 + 8] == bytes.fromhex("50 b8 17 00 00 00 cd 82")


def test_pae_cr3_encoding():
    assert PV32.mfn_to_cr3(0x123456) == 0x23456001
    assert PV32.cr3_to_mfn(PV32.mfn_to_cr3(0x123456)) == 0x123456
    assert PV64.mfn_to_cr3(0x123456) == 0x123456000


def test_too_little_memory_is_a_clear_error(lab_machine):
    with pytest.raises(BuildError, match="too small"):
        lab_machine("hello-pv64", memory_mib=2)


def test_shared_info_starts_with_events_masked(lab_machine):
    m = lab_machine("hello-pv64")
    assert m.memory.view[m.vcpu.vcpu_info_ma + 1] == 1


@pytest.mark.parametrize("name,abi", [("grub-x86_64", "pv64"), ("grub-i386", "pv32pae"),
                                      ("gnumach-dbg", "pv64"), ("linux-cloud", "pv64")])
def test_debian_guests_build(debian_guest, name, abi):
    from xendbg.machine.loader import load_kernel
    image = load_kernel(debian_guest(name))
    assert image.abi == abi
    memory, domain, layout = build_domain(image, BuildConfig(memory_mib=256))
    assert layout.regions[0].name == "kernel"
    if name == "linux-cloud":
        # Linux asks for its p2m at INIT_P2M, outside the start-of-day region.
        assert layout.p2m_va == 0x8000000000
        assert any(r.name == "p2m (INIT_P2M)" for r in layout.regions)
    if name == "gnumach-dbg":
        assert domain.hypercall_page_va == 0x40002000

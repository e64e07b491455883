"""Grant tables v1 through the hypercall interface (grant_table_op, hypercall 20).

The expected answers are Xen's (``common/grant_table.c``) for a domU with no other guest domain:
setup_table / query_size / set_version / get_version as GRUB and Linux use them, the per-operation
``GNTST_*`` status codes, the frames shared with the guest, and the debugger's view of the table.
"""

from __future__ import annotations

import struct

import numpy as np
import pytest

from xendbg.machine.abi import xen as X
from xendbg.machine.grant_table import (
    MAX_GRANT_FRAMES,
    GNTCOPY_dest_gref,
    GNTCOPY_source_gref,
    GNTMAP_host_map,
    GNTMAP_readonly,
    GNTST_bad_copy_arg,
    GNTST_bad_domain,
    GNTST_bad_gntref,
    GNTST_bad_handle,
    GNTST_bad_page,
    GNTST_bad_virt_addr,
    GNTST_general_error,
    GNTST_okay,
    GNTST_permission_denied,
    GTF_permit_access,
    GTF_readonly,
    decode_flags,
)

GUESTS = ["hello-pv64", "hello-pv32"]
EINVAL, ESRCH, EFAULT, ENOSYS, EPERM, EOPNOTSUPP = 22, 3, 14, 38, 1, 95
GRANT_OP = X.HYPERVISOR_grant_table_op


class Guest:
    def __init__(self, m, va: int) -> None:
        self.m = m
        self.va = va                 # argument structures
        self.out = va + 0x800        # frame lists
        self.w = m.abi.word
        self.is64 = m.abi.bits == 64

    def hypercall(self, nr: int, *args: int) -> int:
        self.m.hypercall(nr, list(args), 0)
        assert not self.m.internal_errors, self.m.internal_errors
        bits = self.m.abi.bits
        value = self.m.cpu.uc.reg_read(self.m.cpu.ax_reg) & ((1 << bits) - 1)
        return value - (1 << bits) if value >> (bits - 1) else value

    def op(self, cmd: int, arg: bytes, count: int = 1) -> tuple[int, bytes]:
        self.m.guest.write(self.va, arg)
        rc = self.hypercall(GRANT_OP, cmd, self.va, count)
        return rc, self.m.guest.read(self.va, len(arg))

    def setup_table(self, nr_frames: int, dom: int = X.DOMID_SELF,
                    frame_list: int | None = None) -> tuple[int, int, list[int]]:
        fl = self.out if frame_list is None else frame_list
        self.m.guest.write(self.out, b"\xEE" * 0x400)
        if self.is64:
            arg = struct.pack("<HxxIhxxxxxxQ", dom, nr_frames, 0x7777, fl)
        else:
            arg = struct.pack("<HxxIhxxI", dom, nr_frames, 0x7777, fl)
        rc, out = self.op(X.GNTTABOP_setup_table, arg)
        (status,) = struct.unpack_from("<h", out, 8)
        frames = [self.m.guest.read_word(self.out + i * self.w) for i in range(nr_frames)] \
            if frame_list is None else []
        return rc, status, frames

    def query_size(self, dom: int = X.DOMID_SELF) -> tuple[int, tuple[int, int, int]]:
        rc, out = self.op(X.GNTTABOP_query_size, struct.pack("<HxxIIhxx", dom, 0xAAAA, 0xBBBB, 77))
        return rc, struct.unpack_from("<IIh", out, 4)

    def grant(self, ref: int, flags: int, domid: int, frame: int) -> None:
        """What a guest does to grant access: write the entry into its (mapped) table."""
        self.m.memory.write(self.m.grant_table._entry_ma(ref), struct.pack("<HHI", flags, domid,
                                                                            frame))


@pytest.fixture(params=GUESTS)
def g(request, lab_machine, scratch_va):
    m = lab_machine(request.param)
    return Guest(m, scratch_va(m))


def test_one_frame_from_the_start_shared_with_the_domain(g):
    gt = g.m.grant_table
    assert gt.nr_frames == 1 and gt.version == 1 and gt.max_frames == MAX_GRANT_FRAMES == 64
    mfn = gt.frames[0]
    assert int(g.m.memory.owner[mfn]) == g.m.domain.domid, "share_xen_page_with_guest"
    assert mfn not in set(g.m.domain.p2m.tolist()), "not one of the domain's RAM frames"
    assert g.m.layout.m2p[mfn] == np.iinfo(g.m.layout.m2p.dtype).max, "no pfn yet"
    assert not g.m.memory.read(mfn << 12, 4096).strip(b"\0")


def test_grub_sequence(g):
    """GRUB: set_version(1), then setup_table(DOMID_SELF, 1 frame) and map the returned mfn."""
    rc, out = g.op(X.GNTTABOP_set_version, struct.pack("<I", 1))
    assert (rc, struct.unpack("<I", out)[0]) == (0, 1)
    rc, status, frames = g.setup_table(1)
    assert (rc, status) == (0, GNTST_okay)
    assert frames == g.m.grant_table.frames
    assert g.m.owns_frame(frames[0]), "the guest may map it read-write"


def test_setup_table_grows_and_reports_in_status(g):
    rc, status, frames = g.setup_table(4)
    assert (rc, status) == (0, GNTST_okay) and len(set(frames)) == 4
    assert frames[0] == g.m.grant_table.frames[0], "existing frames keep their place"
    assert all(int(g.m.memory.owner[f]) == g.m.domain.domid for f in frames)
    assert g.query_size() == (0, (4, 64, GNTST_okay))
    assert g.setup_table(2)[:2] == (0, GNTST_okay), "asking for fewer does not shrink"
    assert g.m.grant_table.nr_frames == 4
    # Errors go into status; the hypercall itself succeeds.
    assert g.setup_table(65)[:2] == (0, GNTST_general_error)
    assert g.setup_table(1, dom=9)[:2] == (0, GNTST_bad_domain)
    assert g.setup_table(1, dom=0)[:2] == (0, GNTST_bad_domain)
    assert g.setup_table(1, dom=g.m.domain.domid)[:2] == (0, GNTST_okay)
    pt = next(r for r in g.m.layout.regions if r.name == "page tables")
    assert g.setup_table(1, frame_list=pt.va)[:2] == (0, GNTST_bad_virt_addr), "read-only list"
    assert g.m.grant_table.nr_frames == 4


def test_setup_table_hypercall_errors(g):
    arg = struct.pack("<HxxIhxxxxxxQ" if g.is64 else "<HxxIhxxI", X.DOMID_SELF, 1, 0, g.out)
    assert g.op(X.GNTTABOP_setup_table, arg, count=2)[0] == -EINVAL
    assert g.hypercall(GRANT_OP, X.GNTTABOP_setup_table, 0x1000, 1) == -EFAULT
    bad_list = 0xFFFF800000000000 if g.is64 else 0xFC000000
    arg = struct.pack("<HxxIhxxxxxxQ" if g.is64 else "<HxxIhxxI", X.DOMID_SELF, 1, 0, bad_list)
    assert g.op(X.GNTTABOP_setup_table, arg)[0] == -EFAULT, "frame list in Xen's area"


def test_query_size(g):
    assert g.query_size() == (0, (1, 64, GNTST_okay))
    assert g.query_size(dom=9) == (0, (0xAAAA, 0xBBBB, GNTST_bad_domain))
    rc, out = g.op(X.GNTTABOP_query_size, b"\0" * 16, count=0)
    assert rc == -EINVAL


def test_versions(g):
    rc, out = g.op(X.GNTTABOP_set_version, struct.pack("<I", 2))
    assert (rc, struct.unpack("<I", out)[0]) == (-ENOSYS, 1), "v2 refused, current written back"
    rc, out = g.op(X.GNTTABOP_set_version, struct.pack("<I", 3))
    assert (rc, struct.unpack("<I", out)[0]) == (-EINVAL, 1)
    rc, out = g.op(X.GNTTABOP_get_version, struct.pack("<HHI", X.DOMID_SELF, 0, 0xFFFF))
    assert (rc, struct.unpack_from("<I", out, 4)[0]) == (0, 1)
    assert g.op(X.GNTTABOP_get_version, struct.pack("<HHI", 9, 0, 0))[0] == -ESRCH
    assert g.hypercall(GRANT_OP, X.GNTTABOP_get_version, 0x1000, 1) == -EFAULT
    # Version 1 has no status frames.
    arg = struct.pack("<IHh", 1, X.DOMID_SELF, 5) + bytes(8 if g.is64 else 4)
    assert struct.unpack_from("<h", g.op(X.GNTTABOP_get_status_frames, arg)[1], 6)[0] \
        == GNTST_general_error
    arg = struct.pack("<IHh", 0, X.DOMID_SELF, 5) + bytes(8 if g.is64 else 4)
    assert struct.unpack_from("<h", g.op(X.GNTTABOP_get_status_frames, arg)[1], 6)[0] \
        == GNTST_okay


def map_op(host_addr: int, flags: int, ref: int, dom: int) -> bytes:
    return struct.pack("<QIIHhIQ", host_addr, flags, ref, dom, 0x55, 0x66, 0x77)


def test_map_grant_ref_answers(g):
    ops = [map_op(0, 0, 0, 9),                               # no map flags
           map_op(g.va, GNTMAP_host_map, 0, 9),              # no such domain
           map_op(g.va, GNTMAP_host_map, 0, 0),              # dom0 has no grant table here
           map_op(g.va, GNTMAP_host_map, 0, X.DOMID_SELF),   # not a domain number
           map_op(g.va, GNTMAP_host_map, 5000, g.m.domain.domid),   # ref beyond the table
           map_op(g.va, GNTMAP_host_map, 3, g.m.domain.domid)]      # entry not granted
    rc, out = g.op(X.GNTTABOP_map_grant_ref, b"".join(ops), count=len(ops))
    assert rc == 0
    statuses = [struct.unpack_from("<h", out, 32 * i + 18)[0] for i in range(len(ops))]
    assert statuses == [GNTST_bad_gntref, GNTST_bad_domain, GNTST_bad_domain, GNTST_bad_domain,
                        GNTST_bad_gntref, GNTST_general_error]
    for i in range(len(ops)):
        assert out[32 * i + 20:32 * i + 32] == ops[i][20:], "handle and bus address untouched"


def test_map_of_own_grants(g):
    me = g.m.domain.domid
    frame = g.m.domain.p2m[5].item()
    g.grant(7, GTF_permit_access | GTF_readonly, me, frame)
    g.grant(8, GTF_permit_access, 0, frame)                  # granted to dom0, not to us
    rc, out = g.op(X.GNTTABOP_map_grant_ref, map_op(g.va, GNTMAP_host_map, 7, me))
    assert rc == 0 and struct.unpack_from("<h", out, 18)[0] == GNTST_general_error, \
        "writable map of a read-only grant"
    rc, out = g.op(X.GNTTABOP_map_grant_ref, map_op(g.va, GNTMAP_host_map, 8, me))
    assert struct.unpack_from("<h", out, 18)[0] == GNTST_general_error
    g.grant(9, GTF_permit_access, me, 0)                     # frame 0 is Xen's
    rc, out = g.op(X.GNTTABOP_map_grant_ref, map_op(g.va, GNTMAP_host_map, 9, me))
    assert struct.unpack_from("<h", out, 18)[0] == GNTST_bad_page
    # A valid self-grant needs the MMU's page references: visible -ENOSYS, no flags changed.
    rc, _ = g.op(X.GNTTABOP_map_grant_ref,
                 map_op(g.va, GNTMAP_host_map | GNTMAP_readonly, 7, me))
    assert rc == -ENOSYS
    assert g.m.grant_table.read_entry(7) == (GTF_permit_access | GTF_readonly, me, frame)


def test_unmap_has_no_handles(g):
    for cmd in (X.GNTTABOP_unmap_grant_ref, X.GNTTABOP_unmap_and_replace):
        ops = struct.pack("<QQIhxx", g.va, 0, 0, 0x33) * 2
        rc, out = g.op(cmd, ops, count=2)
        assert rc == 0
        assert [struct.unpack_from("<h", out, 24 * i + 20)[0] for i in (0, 1)] == \
            [GNTST_bad_handle] * 2


def test_transfer(g):
    word = "<Q" if g.is64 else "<I"
    size = 24 if g.is64 else 16
    status_at = 16 if g.is64 else 12

    def transfer(mfn, domid=9, ref=0):
        arg = struct.pack(word, mfn) + struct.pack("<HxxIh", domid, ref, 0x44)
        rc, out = g.op(X.GNTTABOP_transfer, arg.ljust(size, b"\0"))
        return rc, struct.unpack_from("<h", out, status_at)[0]

    assert transfer(g.m.memory.nr_frames + 5) == (0, GNTST_bad_page)
    assert transfer(0) == (0, GNTST_bad_page), "not the domain's frame"
    assert transfer(g.m.grant_table.frames[0]) == (0, GNTST_bad_page), "a Xen-heap page"
    assert transfer(g.m.domain.shared_info_mfn) == (0, GNTST_bad_page)
    assert transfer(g.m.domain.p2m[100].item())[0] == -ENOSYS


def copy_op(g, src, src_dom, dst, dst_dom, flags, length=16, src_off=0, dst_off=0):
    ptr = "<QHH4x" if g.is64 else "<IHH"        # struct gnttab_copy_ptr
    return (struct.pack(ptr, src, src_dom, src_off) + struct.pack(ptr, dst, dst_dom, dst_off)
            + struct.pack("<HHhxx", length, flags, 0x11))


def copy_statuses(g, ops):
    size = 40 if g.is64 else 24
    rc, out = g.op(X.GNTTABOP_copy, b"".join(ops), count=len(ops))
    assert rc == 0
    return [struct.unpack_from("<h", out, size * i + size - 4)[0] for i in range(len(ops))]


def test_copy_errors(g):
    me = g.m.domain.domid
    mine = g.m.domain.p2m[10].item()
    ops = [copy_op(g, mine, 9, mine, X.DOMID_SELF, 0),                 # frame of another domain
           copy_op(g, 1, 9, mine, X.DOMID_SELF, GNTCOPY_source_gref),  # gref of a missing domain
           copy_op(g, 1, X.DOMID_SELF, mine, 0, GNTCOPY_dest_gref),    # dom0: no grant table
           copy_op(g, 0, X.DOMID_SELF, mine, X.DOMID_SELF, 0),         # frame 0 is not ours
           copy_op(g, 300, me, mine, X.DOMID_SELF, GNTCOPY_source_gref),   # ref not granted
           copy_op(g, 600, me, mine, X.DOMID_SELF, GNTCOPY_source_gref),   # ref beyond the table
           copy_op(g, mine, X.DOMID_SELF, g.m.layout.pt_base_mfn, X.DOMID_SELF, 0),  # a table
           copy_op(g, mine, X.DOMID_SELF, mine, X.DOMID_SELF, 0, length=16, dst_off=4090)]
    assert copy_statuses(g, ops) == [
        GNTST_permission_denied, GNTST_bad_domain, GNTST_bad_domain, GNTST_bad_page,
        GNTST_general_error, GNTST_bad_gntref, GNTST_general_error, GNTST_bad_copy_arg]


def test_copy_inside_the_domain(g):
    """Frames by number with DOMID_SELF, or the domain's own grants to itself."""
    me = g.m.domain.domid
    a, b = g.m.domain.p2m[10].item(), g.m.domain.p2m[11].item()
    mem = g.m.memory
    mem.write((a << 12) + 100, b"grant copy works")
    mem.write(b << 12, bytes(4096))
    g.grant(5, GTF_permit_access | GTF_readonly, me, a)
    g.grant(6, GTF_permit_access, me, b)
    ops = [copy_op(g, a, X.DOMID_SELF, b, X.DOMID_SELF, 0, length=16, src_off=100, dst_off=8),
           copy_op(g, 5, me, b, X.DOMID_SELF, GNTCOPY_source_gref, length=5, src_off=100,
                   dst_off=200),
           copy_op(g, 5, me, 6, me, GNTCOPY_source_gref | GNTCOPY_dest_gref, length=4,
                   src_off=106, dst_off=300),
           copy_op(g, b, X.DOMID_SELF, 5, me, GNTCOPY_dest_gref)]          # read-only grant
    assert copy_statuses(g, ops) == [GNTST_okay, GNTST_okay, GNTST_okay, GNTST_general_error]
    assert mem.read((b << 12) + 8, 16) == b"grant copy works"
    assert mem.read((b << 12) + 200, 5) == b"grant"
    assert mem.read((b << 12) + 300, 4) == b"copy"
    assert g.m.grant_table.read_entry(5) == (GTF_permit_access | GTF_readonly, me, a), \
        "the entry's reading/writing flags are back to what the guest wrote"
    assert not g.m.mmu.holds[a] and not g.m.mmu.holds[b], "every reference released"


def test_swap_grant_ref(g):
    me = g.m.domain.domid
    g.grant(1, GTF_permit_access, me, 0x1234)
    g.grant(2, GTF_permit_access | GTF_readonly, 0, 0x5678)
    ops = struct.pack("<IIhxx", 1, 2, 9) + struct.pack("<IIhxx", 1, 512, 9) \
        + struct.pack("<IIhxx", 3, 3, 9)
    rc, out = g.op(X.GNTTABOP_swap_grant_ref, ops, count=3)
    assert rc == 0
    assert [struct.unpack_from("<h", out, 12 * i + 8)[0] for i in range(3)] == \
        [GNTST_okay, GNTST_bad_gntref, GNTST_okay]
    assert g.m.grant_table.read_entry(1) == (GTF_permit_access | GTF_readonly, 0, 0x5678)
    assert g.m.grant_table.read_entry(2) == (GTF_permit_access, me, 0x1234)


def test_cache_flush(g):
    mine = g.m.domain.p2m[10].item() << 12

    def flush(addr, offset, length, op, cmd=X.GNTTABOP_cache_flush):
        return g.op(cmd, struct.pack("<QHHI", addr, offset, length, op))[0]

    assert flush(mine, 0, 64, 1) == 0, "clean"
    assert flush(mine, 0, 64, 3) == 0, "clean and invalidate"
    assert flush(mine, 0, 64, 2) == -EOPNOTSUPP, "x86 cannot only invalidate"
    assert flush(mine, 4000, 200, 1) == -EINVAL
    assert flush(mine, 0, 64, 4) == -EINVAL
    assert flush(mine, 0, 0, 1) == 0
    assert flush(0, 0, 64, 1) == -EPERM
    assert flush(1 << 60, 0, 64, 1) == -EINVAL
    assert flush(mine, 0, 0, 1, cmd=X.GNTTABOP_cache_flush | 1 << 12) == -84, "EILSEQ"


def test_dispatch_errors(g):
    assert g.hypercall(GRANT_OP, X.GNTTABOP_dump_table, g.va, 1) == -ENOSYS, "gone from Xen"
    assert g.hypercall(GRANT_OP, 13, g.va, 1) == -ENOSYS
    assert g.hypercall(GRANT_OP, X.GNTTABOP_query_size | 1 << 12, g.va, 1) == -EINVAL
    assert g.hypercall(GRANT_OP, X.GNTTABOP_map_grant_ref, g.va, 1 << 31) == -EINVAL
    top = 0xFFFF800000000000 - 64 if g.is64 else 0xF5800000 - 64
    assert g.hypercall(GRANT_OP, X.GNTTABOP_map_grant_ref, top, 4) == -EFAULT, \
        "the whole array is checked first"
    assert g.hypercall(GRANT_OP, X.GNTTABOP_map_grant_ref, 0x1000, 1) == -EFAULT
    assert g.hypercall(GRANT_OP, X.GNTTABOP_map_grant_ref, g.va, 0) == 0


def test_entries_for_the_debugger(g):
    me = g.m.domain.domid
    assert g.m.grant_table.entries() == []
    assert g.setup_table(2)[:2] == (0, GNTST_okay)
    g.grant(3, GTF_permit_access | GTF_readonly, 0, 0xABC)
    g.grant(700, 2, me, 0)                                   # accept_transfer, in frame 2
    views = g.m.grant_table.entries()
    assert [(v.ref, v.flags, v.domid, v.frame) for v in views] == \
        [(3, GTF_permit_access | GTF_readonly, 0, 0xABC), (700, 2, me, 0)]
    assert views[0].flag_names == ("permit_access", "readonly")
    assert decode_flags(2 | 1 << 3) == ("accept_transfer", "transfer_completed")


def test_add_to_physmap(g):
    gt = g.m.grant_table
    p2m, m2p = g.m.domain.p2m, g.m.layout.m2p
    gpfn = len(p2m) - 1
    old = int(p2m[gpfn])
    assert gt.add_to_physmap(0, gpfn) == 0
    mfn = gt.frames[0]
    assert int(p2m[gpfn]) == mfn and int(m2p[mfn]) == gpfn
    assert m2p[old] == np.iinfo(m2p.dtype).max, "the frame that was there is unhooked"
    assert gt.add_to_physmap(0, gpfn - 1) == 0, "moving it leaves the old pfn empty"
    assert int(p2m[gpfn]) == (1 << 64) - 1 and int(m2p[mfn]) == gpfn - 1
    assert gt.add_to_physmap(3, gpfn) == 0 and gt.nr_frames == 4, "an index past the end grows"
    assert gt.add_to_physmap(64, gpfn) == -EINVAL
    assert gt.add_to_physmap(1, len(p2m)) == -EINVAL

"""The PV domain builder: what libxc's ``xc_dom_*`` and Xen's ``dom0_construct_pv`` do for a domU.

Given a loaded kernel image it lays out machine memory, gives the domain its frames through a p2m
that is not the identity, writes the M2P, copies the kernel's segments, and builds the start-of-day
virtual layout of ``xen.h``::

    kernel | initrd | p2m list | start_info | xenstore ring | console ring | page tables | stack
    … padding to a 4 MiB boundary (≥ 512 KiB)

all mapped from VIRT_BASE (pfn 0) with the page-table frames read-only, plus the p2m at INIT_P2M when
the kernel asks for it there. The result is a :class:`BootLayout` that the machine uses to start
the vCPU, and the debugger uses to show where everything is.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

import numpy as np

from xendbg.machine.abi import xen as X
from xendbg.machine.abi.layout import ABIS, LEGACY_MAX_VCPUS, VCPU_INFO_SIZE, Abi
from xendbg.machine.clock import ClockConfig
from xendbg.machine.domain import INVALID_MFN, Domain, Vcpu
from xendbg.machine.memory import PAGE_SHIFT, PAGE_SIZE, FrameAllocator, MachineMemory
from xendbg.machine.pagetable import (
    _PAGE_ACCESSED,
    _PAGE_DIRTY,
    _PAGE_PRESENT,
    _PAGE_RW,
    _PAGE_USER,
    TableBuilder,
    count_tables,
)
from xendbg.machine.xenarea import XenArea, build_xen_area

DOMID_GUEST = 1
DOMID_OTHER = 0            # the notional dom0 whose frames sit between the guest's
XEN_LOW_FRAMES = 256       # Xen keeps the first MiB, as on real hardware
CHUNK = 512                # guest frames come in 2 MiB chunks …
GAP = 16                   # … separated by 16 frames of another domain
FREE_POOL_FRAMES = 4096    # unowned frames for later allocations (balloon, grant frames, …)
STORE_EVTCHN = 1           # libxl allocates the xenstore port first, then the console's
CONSOLE_EVTCHN = 2

INVALID_M2P_64 = (1 << 64) - 1
INVALID_M2P_32 = (1 << 32) - 1

# All of a domain's memory is one host buffer, and the builder keeps per-frame tables in Python: 16
# GiB is far above what the guests need (Linux boots in 128 MiB) and still builds in seconds.
MAX_MEMORY_MIB = 16384
MAX_MEMORY_MIB_32 = 3072   # a 32-bit PV guest's pseudo-physical space ends below Xen's hole


def memory_limit_mib(abi_name: str) -> int:
    """The most memory xendbg gives a domain of this ABI (``pv64``, ``pv32pae``)."""
    return MAX_MEMORY_MIB_32 if ABIS[abi_name].bits == 32 else MAX_MEMORY_MIB


class BuildError(Exception):
    """The domain cannot be built (for instance: the kernel does not fit in the memory given)."""


@dataclass
class BuildConfig:
    memory_mib: int = 128
    cmdline: str = ""
    ramdisk: bytes | None = None
    p2m: str = "shuffled"            # "shuffled" (default, non-identity) or "linear"
    name: str = "guest"              # the domain's name (xenstore ``name``)
    # Virtual time: the TSC frequency and the wallclock's start date (fixed, so that runs repeat).
    clock: ClockConfig = field(default_factory=ClockConfig)


@dataclass
class Region:
    name: str
    va: int
    pfn: int
    pages: int


@dataclass
class BootLayout:
    """Where the builder put everything (what Xen's ``xc_dom_image`` records)."""

    regions: list[Region]
    entry: int
    stack_top: int
    start_info_va: int
    pt_base_va: int
    pt_base_mfn: int
    nr_pt_frames: int
    pt_frames: list[tuple[int, int]]     # (level, mfn) of every bootstrap table
    p2m_va: int
    mapped_end_va: int
    machine_frames: int
    m2p: np.ndarray                      # view of the M2P in machine memory (mfn → pfn)
    xen: XenArea
    notes_summary: list[tuple[str, object]] = field(default_factory=list)


def _hypercall_page(abi: Abi) -> bytes:
    """Xen's hypercall stubs: 32 bytes per hypercall, int3 padding (ABI.md §2)."""
    page = bytearray(b"\xcc" * PAGE_SIZE)
    for i in range(PAGE_SIZE // 32):
        if abi.bits == 64:
            if i == X.HYPERVISOR_iret:
                stub = b"\x51\x41\x53\x50\xb8" + struct.pack("<I", i) + b"\x0f\x05"
            else:
                stub = b"\x51\x41\x53\xb8" + struct.pack("<I", i) + b"\x0f\x05\x41\x5b\x59\xc3"
        else:
            if i == X.HYPERVISOR_iret:
                stub = b"\x50\xb8" + struct.pack("<I", i) + b"\xcd\x82"
            else:
                stub = b"\xb8" + struct.pack("<I", i) + b"\xcd\x82\xc3"
        page[i * 32:i * 32 + len(stub)] = stub
    return bytes(page)


def _round_up(value: int, align: int) -> int:
    return (value + align - 1) & ~(align - 1)


class DomainBuilder:
    def __init__(self, image, config: BuildConfig) -> None:
        self.image = image
        self.config = config
        self.abi: Abi = ABIS[image.abi]

    # -- machine layout -----------------------------------------------------------------------
    def _machine_frames(self, nr_pages: int) -> tuple[int, int]:
        """(total machine frames, Xen frames) for a guest of ``nr_pages``."""
        chunks = (nr_pages + CHUNK - 1) // CHUNK
        guest_region = nr_pages + chunks * GAP + FREE_POOL_FRAMES
        total = XEN_LOW_FRAMES + guest_region
        for _ in range(4):    # the M2P's size depends on the total, which includes it
            m2p_frames = (total * self.abi.m2p_entry + PAGE_SIZE - 1) // PAGE_SIZE
            xen = XEN_LOW_FRAMES + m2p_frames + m2p_frames // 512 + 16
            total = xen + guest_region
        return total, xen

    def build(self) -> tuple[MachineMemory, Domain, BootLayout]:
        abi = self.abi
        image = self.image
        cfg = self.config
        if cfg.memory_mib < 4:
            raise BuildError(f"--memory {cfg.memory_mib} MiB is too small (at least 4 MiB)")
        nr_pages = cfg.memory_mib << (20 - PAGE_SHIFT)
        if abi.bits == 32 and cfg.memory_mib > MAX_MEMORY_MIB_32:
            raise BuildError(f"a 32-bit PV guest can have at most {MAX_MEMORY_MIB_32} MiB")
        if cfg.memory_mib > MAX_MEMORY_MIB:
            raise BuildError(f"--memory {cfg.memory_mib} MiB is more than xendbg's limit of "
                             f"{MAX_MEMORY_MIB} MiB")
        # Refuse a kernel that cannot fit before allocating anything for it.
        self._check_fits(_round_up(image.virt_kend, PAGE_SIZE) - image.virt_base, nr_pages)
        total, xen_frames = self._machine_frames(nr_pages)
        try:
            memory = MachineMemory(total)
        except (OSError, OverflowError, MemoryError, ValueError) as exc:
            raise BuildError(f"cannot allocate {total << PAGE_SHIFT >> 20} MiB of machine memory "
                             f"for a {cfg.memory_mib} MiB domain: {exc}") from None

        # Xen's frames: [1, xen_frames). Frame 0 is never handed out.
        xen_alloc = FrameAllocator(memory, list(range(1, xen_frames)))
        memory.owner[0] = X.DOMID_XEN

        def alloc_xen() -> int:
            return xen_alloc.alloc(X.DOMID_XEN)

        # The guest's frames and the other domain's, chunk by chunk after Xen's.
        guest_mfns: list[int] = []
        chunk_starts: list[int] = []
        mfn = xen_frames
        remaining = nr_pages
        while remaining > 0:
            n = min(CHUNK, remaining)
            chunk_starts.append(mfn)
            memory.owner[mfn:mfn + n] = DOMID_GUEST
            mfn += n
            memory.owner[mfn:mfn + GAP] = DOMID_OTHER
            mfn += GAP
            remaining -= n
        sizes = [min(CHUNK, nr_pages - i * CHUNK) for i in range(len(chunk_starts))]
        order = list(range(len(chunk_starts)))
        if cfg.p2m == "shuffled":
            # Reverse the chunk order, keeping the (possibly short) last chunk's size with it.
            order = order[::-1]
        elif cfg.p2m != "linear":
            raise BuildError(f"unknown p2m layout {cfg.p2m!r} (use 'shuffled' or 'linear')")
        for c in order:
            guest_mfns.extend(range(chunk_starts[c], chunk_starts[c] + sizes[c]))
        p2m = np.array(guest_mfns, dtype=np.uint64)

        # The M2P, in Xen frames, seen by the guest read-only.
        m2p_frames = (total * abi.m2p_entry + PAGE_SIZE - 1) // PAGE_SIZE
        m2p_mfns = [alloc_xen() for _ in range(m2p_frames)]
        if m2p_mfns != list(range(m2p_mfns[0], m2p_mfns[0] + m2p_frames)):
            raise AssertionError("M2P frames must be contiguous")
        m2p_ma = m2p_mfns[0] << PAGE_SHIFT
        dtype = "<u8" if abi.m2p_entry == 8 else "<u4"
        m2p = memory.bytes[m2p_ma:m2p_ma + total * abi.m2p_entry].view(dtype)
        m2p[:] = INVALID_M2P_64 if abi.m2p_entry == 8 else INVALID_M2P_32
        m2p[p2m.astype(np.int64)] = np.arange(nr_pages, dtype=m2p.dtype)
        other = np.nonzero(memory.owner == DOMID_OTHER)[0]
        m2p[other] = np.arange(len(other), dtype=m2p.dtype)   # plausible pfns of dom0's own

        xen_area = build_xen_area(abi, memory, alloc_xen, m2p_mfns)
        shared_info_mfn = alloc_xen()
        memory.owner[shared_info_mfn] = DOMID_GUEST     # a Xen heap page shared with the guest

        vcpu = Vcpu(vcpu_id=0)
        domain = Domain(domid=DOMID_GUEST, abi=abi, nr_pages=nr_pages, max_pages=nr_pages,
                        p2m=p2m, virt_base=image.virt_base, vcpus=[vcpu],
                        shared_info_mfn=shared_info_mfn,
                        features_required=image.features_required)
        layout = self._layout(memory, domain, xen_area, m2p)
        self._shared_info(memory, domain)
        return memory, domain, layout

    def _check_fits(self, span: int, nr_pages: int) -> None:
        """BuildError unless ``span`` bytes from VIRT_BASE fit in ``nr_pages`` guest frames."""
        if span <= nr_pages << PAGE_SHIFT:
            return
        need_mib = (span + (1 << 20) - 1) >> 20
        bits = self.abi.bits
        limit = memory_limit_mib(self.abi.name)
        if need_mib > limit:
            raise BuildError(f"the kernel's start-of-day layout needs {need_mib} MiB from VIRT_BASE "
                             f"{self.image.virt_base:#x}, more than xendbg's limit of {limit} MiB "
                             f"for a {bits}-bit guest")
        raise BuildError(f"the kernel's start-of-day layout needs {need_mib} MiB but the domain "
                         f"has {self.config.memory_mib} MiB (use --memory)")

    # -- the start-of-day virtual layout ------------------------------------------------------------
    def _layout(self, memory: MachineMemory, domain: Domain, xen_area: XenArea,
                m2p: np.ndarray) -> BootLayout:
        abi, image, cfg = self.abi, self.image, self.config
        virt_base = image.virt_base
        word = abi.word
        nr_pages = domain.nr_pages

        def va_to_pfn(va: int) -> int:
            return (va - virt_base) >> PAGE_SHIFT

        regions: list[Region] = []
        cursor = image.virt_kstart & ~(PAGE_SIZE - 1)
        if cursor < virt_base:
            raise BuildError(f"kernel starts at {cursor:#x}, below VIRT_BASE {virt_base:#x}")

        def alloc(name: str, size: int) -> Region:
            nonlocal cursor
            pages = max(1, (size + PAGE_SIZE - 1) // PAGE_SIZE)
            region = Region(name, cursor, va_to_pfn(cursor), pages)
            regions.append(region)
            cursor += pages << PAGE_SHIFT
            return region

        alloc("kernel", _round_up(image.virt_kend, PAGE_SIZE) - cursor)
        ramdisk = alloc("ramdisk", len(cfg.ramdisk)) if cfg.ramdisk else None
        p2m_base = image.notes.init_p2m
        if p2m_base is not None and (p2m_base >= virt_base or p2m_base & (PAGE_SIZE - 1)):
            p2m_base = None                       # as libxc: unusable INIT_P2M is ignored
        p2m_bytes = nr_pages * word
        p2m_region = alloc("p2m", p2m_bytes) if p2m_base is None else None
        start_info = alloc("start_info", PAGE_SIZE)
        store = alloc("xenstore", PAGE_SIZE)
        console = alloc("console", PAGE_SIZE)

        # Page tables map [virt_base, end) (+ the p2m at INIT_P2M); their count changes the end.
        levels = abi.page_levels
        p2m_pages = (p2m_bytes + PAGE_SIZE - 1) // PAGE_SIZE
        pt_start = cursor
        # Everything up to here, one table, the stack and the padding must fit in the domain: check
        # before sizing the tables for a span that may be a mutated header's terabytes.
        self._check_fits(pt_start + 2 * PAGE_SIZE + (512 << 10) - virt_base
                         + (p2m_pages << PAGE_SHIFT if p2m_base is not None else 0), nr_pages)
        nr_pt = 1
        for _ in range(8):
            stack_va = pt_start + (nr_pt << PAGE_SHIFT)
            end = _round_up(stack_va + PAGE_SIZE + (512 << 10), 4 << 20)
            ranges = [(virt_base, end)]
            if p2m_base is not None:
                ranges.append((p2m_base, p2m_base + (p2m_pages << PAGE_SHIFT)))
            need = 1 + count_tables(ranges, levels)
            if levels == 3 and not any(end - 1 >= 0xC0000000 for _start, end in ranges):
                need += 1       # Xen's slots need the L2 of the top GiB even if nothing else does
            if need == nr_pt:
                break
            nr_pt = need
        pt = alloc("page tables", nr_pt << PAGE_SHIFT)
        stack = alloc("boot stack", PAGE_SIZE)
        mapped_end = _round_up(cursor + (512 << 10), 4 << 20)
        mapped_pages = va_to_pfn(mapped_end)
        p2m_extra = p2m_pages if p2m_base is not None else 0
        if mapped_pages + p2m_extra > nr_pages:
            need_mib = ((mapped_pages + p2m_extra) << PAGE_SHIFT) >> 20
            raise BuildError(f"the kernel's start-of-day layout needs {need_mib + 1} MiB but the "
                             f"domain has {self.config.memory_mib} MiB (use --memory)")
        p2m_pfn = mapped_pages                   # INIT_P2M frames follow the mapped region
        if p2m_base is not None:
            regions.append(Region("p2m (INIT_P2M)", p2m_base, p2m_pfn, p2m_pages))

        # Copy the kernel's segments by physical address (Xen's libelf rule).
        virt_offset = image.virt_base - image.paddr_offset
        for seg in image.segments:
            va = seg.paddr + virt_offset
            self._copy_to_guest(memory, domain, va_to_pfn(va), va & (PAGE_SIZE - 1), seg.data)
        if image.hypercall_page is not None:
            hpfn = va_to_pfn(image.hypercall_page)
            memory.write(domain.pfn_to_mfn(hpfn) << PAGE_SHIFT, _hypercall_page(abi))
            domain.hypercall_page_va = image.hypercall_page
        if ramdisk is not None:
            self._copy_to_guest(memory, domain, ramdisk.pfn, 0, cfg.ramdisk)

        # The p2m list.
        p2m_first = p2m_region.pfn if p2m_region is not None else p2m_pfn
        p2m_data = domain.p2m.astype("<u8" if word == 8 else "<u4").tobytes()
        self._copy_to_guest(memory, domain, p2m_first, 0, p2m_data)
        p2m_va = p2m_region.va if p2m_region is not None else p2m_base

        # Page tables.
        pt_pfns = list(range(pt.pfn, pt.pfn + nr_pt))
        top_mfn = domain.pfn_to_mfn(pt_pfns[0])
        next_table = iter(pt_pfns[1:])

        def alloc_table(_level: int) -> int:
            try:
                return domain.pfn_to_mfn(next(next_table))
            except StopIteration:
                raise AssertionError("page-table count was underestimated") from None

        tb = TableBuilder(memory, levels, top_mfn, alloc_table)
        leaf = _PAGE_PRESENT | _PAGE_RW | _PAGE_ACCESSED | _PAGE_DIRTY
        if abi.bits == 64:
            leaf |= _PAGE_USER      # the 64-bit PV kernel runs in ring 3 (Xen's adjust_guest_l1e)
        pt_range = range(pt.pfn, pt.pfn + nr_pt)
        for pfn in range(va_to_pfn(virt_base), mapped_pages):
            flags = leaf & ~_PAGE_RW if pfn in pt_range else leaf
            tb.map(virt_base + (pfn << PAGE_SHIFT), domain.pfn_to_mfn(pfn), flags)
        if p2m_base is not None:
            for i in range(p2m_pages):
                tb.map(p2m_base + (i << PAGE_SHIFT), domain.pfn_to_mfn(p2m_pfn + i), leaf)
        if levels == 3:
            top_l2 = tb.table_for(0xC0000000, 2)
            xen_area.install(memory, top_l2)
        else:
            xen_area.install(memory, top_mfn)
        if len(tb.tables) != nr_pt:
            raise AssertionError(f"built {len(tb.tables)} tables, reserved {nr_pt}")

        # start_info.
        si = abi.start_info
        base = domain.pfn_to_mfn(start_info.pfn) << PAGE_SHIFT
        page = bytearray(PAGE_SIZE)

        def put(off: int, value: int, size: int = word) -> None:
            page[off:off + size] = value.to_bytes(size, "little")

        page[si.magic:si.magic + len(abi.magic)] = abi.magic
        put(si.nr_pages, nr_pages)
        put(si.shared_info, domain.shared_info_mfn << PAGE_SHIFT)
        put(si.flags, 0, 4)
        domain.store_mfn = domain.pfn_to_mfn(store.pfn)
        domain.console_mfn = domain.pfn_to_mfn(console.pfn)
        domain.store_evtchn = STORE_EVTCHN
        domain.console_evtchn = CONSOLE_EVTCHN
        put(si.store_mfn, domain.store_mfn)
        put(si.store_evtchn, STORE_EVTCHN, 4)
        put(si.console_mfn, domain.console_mfn)
        put(si.console_evtchn, CONSOLE_EVTCHN, 4)
        put(si.pt_base, pt.va)
        put(si.nr_pt_frames, nr_pt)
        put(si.mfn_list, p2m_va)
        if ramdisk is not None:
            put(si.mod_start, ramdisk.va)
            put(si.mod_len, len(cfg.ramdisk))
        cmdline = cfg.cmdline.encode()[:1023]
        page[si.cmd_line:si.cmd_line + len(cmdline)] = cmdline
        if p2m_base is not None:
            put(si.first_p2m_pfn, p2m_pfn)
            put(si.nr_p2m_frames, p2m_pages)
        memory.write(base, bytes(page))
        domain.start_info_pfn = start_info.pfn
        domain.start_info_va = start_info.va

        vcpu = domain.vcpus[0]
        vcpu.guest_table = top_mfn
        vcpu.kernel_ss = abi.kernel_ss
        vcpu.kernel_sp = stack.va + PAGE_SIZE
        vcpu.vcpu_info_ma = domain.shared_info_mfn << PAGE_SHIFT
        return BootLayout(
            regions=regions, entry=image.entry, stack_top=stack.va + PAGE_SIZE,
            start_info_va=start_info.va, pt_base_va=pt.va, pt_base_mfn=top_mfn, nr_pt_frames=nr_pt,
            pt_frames=list(tb.tables), p2m_va=p2m_va, mapped_end_va=mapped_end,
            machine_frames=memory.nr_frames, m2p=m2p, xen=xen_area,
            notes_summary=list(image.notes.entries),
        )

    def _copy_to_guest(self, memory: MachineMemory, domain: Domain, pfn: int, offset: int,
                       data: bytes) -> None:
        """Copy ``data`` to pseudo-physical ``pfn:offset`` onwards, frame by frame through the p2m."""
        pos = 0
        while pos < len(data):
            n = min(PAGE_SIZE - offset, len(data) - pos)
            mfn = domain.pfn_to_mfn(pfn)
            if mfn == INVALID_MFN:
                raise BuildError(f"pfn {pfn:#x} is outside the domain's {domain.nr_pages} pages "
                                 "(use --memory)")
            memory.write((mfn << PAGE_SHIFT) + offset, data[pos:pos + n])
            pos += n
            pfn += 1
            offset = 0

    def _shared_info(self, memory: MachineMemory, domain: Domain) -> None:
        """shared_info starts zeroed, with every vCPU's events masked (as Xen initialises it)."""
        base = domain.shared_info_mfn << PAGE_SHIFT
        for v in range(LEGACY_MAX_VCPUS):
            memory.write(base + v * VCPU_INFO_SIZE + 1, b"\x01")   # evtchn_upcall_mask
        arch = base + domain.abi.arch_shared
        word = domain.abi.word
        memory.write(arch, domain.nr_pages.to_bytes(word, "little"))   # max_pfn


def build_domain(image, config: BuildConfig) -> tuple[MachineMemory, Domain, BootLayout]:
    """Build a PV domain for ``image`` (a :class:`xendbg.machine.loader.KernelImage`)."""
    return DomainBuilder(image, config).build()

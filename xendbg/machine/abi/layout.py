"""Guest-visible structure layouts for the two PV ABIs xendbg serves.

Offsets were computed by the compiler from Xen 4.17's headers (``gcc -m64`` and ``gcc -m32``), see
``shared/reference/ABI.md``. One :class:`Abi` object per ABI carries every width and offset a
mechanism needs, so no handler ever writes ``if pv64``.
"""

from __future__ import annotations

from dataclasses import dataclass

START_INFO_MAGIC_64 = b"xen-3.0-x86_64"
START_INFO_MAGIC_32 = b"xen-3.0-x86_32p"


@dataclass(frozen=True)
class StartInfoLayout:
    magic: int
    nr_pages: int
    shared_info: int
    flags: int
    store_mfn: int
    store_evtchn: int
    console_mfn: int
    console_evtchn: int
    pt_base: int
    nr_pt_frames: int
    mfn_list: int
    mod_start: int
    mod_len: int
    cmd_line: int
    first_p2m_pfn: int
    nr_p2m_frames: int
    size: int


@dataclass(frozen=True)
class Abi:
    name: str
    bits: int                 # 64 or 32
    word: int                 # sizeof(unsigned long) in the guest
    magic: bytes              # start_info.magic
    start_info: StartInfoLayout
    # shared_info
    evtchn_pending: int
    evtchn_mask: int
    wc_version: int
    wc_sec: int
    wc_nsec: int
    wc_sec_hi: int
    arch_shared: int
    shared_info_size: int
    nr_event_channels: int
    # vcpu_info (inside shared_info.vcpu_info[n], 64 bytes each)
    vcpu_pending_sel: int
    vcpu_cr2: int
    vcpu_time: int
    # structures passed to hypercalls
    trap_info_size: int
    trap_info_address: int
    multicall_entry_size: int
    mmuext_op_size: int
    # virtual address space
    m2p_start: int            # the read-only machine-to-phys table
    m2p_end: int
    m2p_entry: int            # bytes per entry
    hypervisor_start: int     # start of the hole the guest may not map
    hypervisor_end: int
    # selectors Xen gives the guest (FLAT_*)
    kernel_cs: int
    kernel_ss: int
    kernel_ds: int
    user_cs: int
    user_ss: int
    user_cs32: int            # 64-bit ABI only: compat user code
    page_levels: int

    def cr3_to_mfn(self, cr3: int) -> int:
        """The 32-bit ABI folds bits 32+ of the L3 frame into cr3's low bits (``xen_cr3_to_pfn``)."""
        if self.bits == 64:
            return cr3 >> 12
        return ((cr3 >> 12) | (cr3 << 20)) & 0xFFFFFFFF

    def mfn_to_cr3(self, mfn: int) -> int:
        if self.bits == 64:
            return mfn << 12
        return ((mfn << 12) | (mfn >> 20)) & 0xFFFFFFFF


PV64 = Abi(
    name="pv64", bits=64, word=8, magic=START_INFO_MAGIC_64,
    start_info=StartInfoLayout(
        magic=0x000, nr_pages=0x020, shared_info=0x028, flags=0x030, store_mfn=0x038,
        store_evtchn=0x040, console_mfn=0x048, console_evtchn=0x050, pt_base=0x058,
        nr_pt_frames=0x060, mfn_list=0x068, mod_start=0x070, mod_len=0x078, cmd_line=0x080,
        first_p2m_pfn=0x480, nr_p2m_frames=0x488, size=1168),
    evtchn_pending=0x800, evtchn_mask=0xA00, wc_version=0xC00, wc_sec=0xC04, wc_nsec=0xC08,
    wc_sec_hi=0xC0C, arch_shared=0xC10, shared_info_size=3136, nr_event_channels=4096,
    vcpu_pending_sel=0x08, vcpu_cr2=0x10, vcpu_time=0x20,
    trap_info_size=16, trap_info_address=8, multicall_entry_size=64, mmuext_op_size=24,
    m2p_start=0xFFFF800000000000, m2p_end=0xFFFF804000000000, m2p_entry=8,
    hypervisor_start=0xFFFF800000000000, hypervisor_end=0xFFFF880000000000,
    kernel_cs=0xE033, kernel_ss=0xE02B, kernel_ds=0, user_cs=0xE033, user_ss=0xE02B,
    user_cs32=0xE023, page_levels=4,
)

PV32 = Abi(
    name="pv32pae", bits=32, word=4, magic=START_INFO_MAGIC_32,
    start_info=StartInfoLayout(
        magic=0x000, nr_pages=0x020, shared_info=0x024, flags=0x028, store_mfn=0x02C,
        store_evtchn=0x030, console_mfn=0x034, console_evtchn=0x038, pt_base=0x03C,
        nr_pt_frames=0x040, mfn_list=0x044, mod_start=0x048, mod_len=0x04C, cmd_line=0x050,
        first_p2m_pfn=0x450, nr_p2m_frames=0x454, size=1112),
    evtchn_pending=0x800, evtchn_mask=0x880, wc_version=0x900, wc_sec=0x904, wc_nsec=0x908,
    wc_sec_hi=0x90C + 0x18, arch_shared=0x90C, shared_info_size=2344, nr_event_channels=1024,
    vcpu_pending_sel=0x04, vcpu_cr2=0x08, vcpu_time=0x20,
    trap_info_size=8, trap_info_address=4, multicall_entry_size=32, mmuext_op_size=12,
    m2p_start=0xF5800000, m2p_end=0xF6800000, m2p_entry=4,
    hypervisor_start=0xF5800000, hypervisor_end=0x1_0000_0000,
    kernel_cs=0xE019, kernel_ss=0xE021, kernel_ds=0xE021, user_cs=0xE02B, user_ss=0xE033,
    user_cs32=0xE02B, page_levels=3,
)

ABIS = {PV64.name: PV64, PV32.name: PV32}

# vcpu_time_info (the same on both ABIs), relative to vcpu_info.time
TIME_VERSION = 0x00
TIME_TSC_TIMESTAMP = 0x08
TIME_SYSTEM_TIME = 0x10
TIME_TSC_TO_SYSTEM_MUL = 0x18
TIME_TSC_SHIFT = 0x1C
TIME_FLAGS = 0x1D
XEN_PVCLOCK_TSC_STABLE_BIT = 1

VCPU_INFO_SIZE = 64
LEGACY_MAX_VCPUS = 32

# xencons_interface (io/console.h)
XENCONS_IN = 0x000
XENCONS_IN_SIZE = 1024
XENCONS_OUT = 0x400
XENCONS_OUT_SIZE = 2048
XENCONS_IN_CONS = 0xC00
XENCONS_IN_PROD = 0xC04
XENCONS_OUT_CONS = 0xC08
XENCONS_OUT_PROD = 0xC0C

# xenstore_domain_interface (io/xs_wire.h)
XENSTORE_REQ = 0x000
XENSTORE_RSP = 0x400
XENSTORE_RING_SIZE = 1024
XENSTORE_REQ_CONS = 0x800
XENSTORE_REQ_PROD = 0x804
XENSTORE_RSP_CONS = 0x808
XENSTORE_RSP_PROD = 0x80C
XENSTORE_SERVER_FEATURES = 0x810
XENSTORE_CONNECTION = 0x814
XENSTORE_ERROR = 0x818

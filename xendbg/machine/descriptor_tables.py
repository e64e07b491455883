"""GDT and segment bases (Xen's ``pv/descriptor-tables.c`` and ``do_set_segment_base``).

A PV guest never writes a live descriptor table: ``set_gdt`` hands Xen up to 14 frames (entries below
Xen's reserved ones), each descriptor of which is checked, and ``update_descriptor`` changes one
descriptor after the same check. The check (Xen's ``check_descriptor``):

* a not-present descriptor is always fine;
* code and data segments are fine, with their DPL raised to the guest's lowest ring (3 for 64-bit
  guests, whose kernel runs in ring 3; at least 1 for 32-bit guests); a 32-bit guest may not have
  long-mode code segments;
* of the system descriptors only call gates are accepted, and only to a code selector the guest can
  use; LDT and TSS descriptors are refused.

xendbg also sets the accessed bit of code/data descriptors, so that the CPU never has to write the
(read-only mapped) table; hardware would set it on first use anyway.

Descriptor frames are a page type of their own (``seg_desc``, see ``mmu/page_types.py``): ``set_gdt``
takes a reference and a ``seg_desc`` type reference on each frame — which validates the frame the
first time, and fails while the frame is mapped writable anywhere — and drops those of the GDT it
replaces; ``update_descriptor`` writes only into a frame that is either a descriptor page or can be
typed writable at that moment (not a page table in use).
"""

from __future__ import annotations

import struct

from xendbg.machine.abi import xen as X
from xendbg.machine.abi.errno import EFAULT, EINVAL
from xendbg.machine.memory import PAGE_SHIFT
from xendbg.machine.mmu.page_types import T_SEG_DESC, T_WRITABLE
from xendbg.machine.xenarea import FIRST_RESERVED_GDT_ENTRY

_S = 1 << 44           # descriptor bits, counted in the 64-bit value
_P = 1 << 47
_L = 1 << 53
_DPL_SHIFT = 45
_ACCESSED = 1 << 40


def check_descriptor(desc: int, bits: int) -> int | None:
    """The descriptor as Xen would install it, or None if Xen refuses it."""
    if not desc & _P:
        return desc
    dpl = (desc >> _DPL_SHIFT) & 3
    if bits == 64 and dpl < 3:
        dpl = 3
    elif bits == 32 and dpl == 0:
        dpl = 1
    desc = (desc & ~(3 << _DPL_SHIFT)) | (dpl << _DPL_SHIFT)
    if desc & _S:
        if bits == 32 and desc & _L and desc >> 43 & 1:
            return None            # long-mode code segment in a 32-bit guest
        return desc | _ACCESSED
    gate_type = (desc >> 40) & 0xF
    if gate_type != 0xC:           # only call gates
        return None
    target_cs = (desc >> 16) & 0xFFFF
    if target_cs & 3 == 0 or (target_cs >> 3) >= FIRST_RESERVED_GDT_ENTRY + 512:
        return None
    return desc


def check_descriptor_page(memory, mfn: int, bits: int) -> bool:
    """Xen's ``validate_segdesc_page``: check all 512 descriptors of a frame, fixing up DPL and the
    accessed bit in place as ``check_descriptor`` does; False at the first one Xen refuses."""
    base = mfn << PAGE_SHIFT
    table = memory.bytes[base:base + 4096].view("<u8")
    fixed = []
    for value in table.tolist():
        new = check_descriptor(value, bits)
        if new is None:
            return False
        fixed.append(new)
    memory.write(base, struct.pack("<512Q", *fixed))
    return True


def do_set_gdt(m, frame_list: int, entries: int) -> int:
    if entries > FIRST_RESERVED_GDT_ENTRY:
        return -EINVAL
    nr_frames = (entries + 511) // 512
    word = m.abi.word
    frames = []
    for i in range(nr_frames):
        gmfn = m.guest.read_word(frame_list + i * word)
        if gmfn is None:
            return -EFAULT
        frames.append(gmfn)
    pt = m.mmu.pt
    pt.begin()
    for i, mfn in enumerate(frames):
        if pt.get_page_and_type(mfn, T_SEG_DESC, f"set_gdt frame {i}"):
            for taken in frames[:i]:
                pt.put_page_and_type(taken)
            m.mmu.reject(f"set_gdt frame {i}", -EINVAL)
            return -EINVAL
    vcpu = m.vcpu
    for old in vcpu.gdt_frames:                 # pv_destroy_gdt
        pt.put_page_and_type(old)
    vcpu.gdt_frames = frames
    vcpu.gdt_entries = entries
    m.xen_area.map_gdt_frames(m.memory, frames)
    m.flush_tlb()
    return 0


def do_update_descriptor(m, maddr: int, desc: int) -> int:
    mfn = maddr >> PAGE_SHIFT
    pt = m.mmu.pt
    pt.begin()
    new = check_descriptor(desc & 0xFFFFFFFFFFFFFFFF, m.abi.bits)
    if maddr & 7 or not m.memory.is_valid_mfn(mfn) or new is None:
        return -EINVAL
    if not pt.get_page(mfn):
        return -EINVAL
    # The frame may be written only if it is a descriptor page, or could be mapped writable now.
    want = T_SEG_DESC if int(pt.type[mfn]) == T_SEG_DESC else T_WRITABLE
    if pt.get_page_type(mfn, want, "update_descriptor"):
        pt.put_page(mfn)
        m.mmu.reject("update_descriptor", -EINVAL)
        return -EINVAL
    m.memory.write_u64(maddr, new)
    pt.put_page_type(mfn)
    pt.put_page(mfn)
    return 0


def do_update_descriptor32(m, ma_lo: int, ma_hi: int, desc_lo: int, desc_hi: int) -> int:
    """The 32-bit ABI passes both 64-bit values as two register halves."""
    return do_update_descriptor(m, ma_hi << 32 | ma_lo, desc_hi << 32 | desc_lo)


def do_set_segment_base(m, which: int, base: int) -> int:
    vcpu = m.vcpu
    canonical = base < (1 << 47) or base >= 0xFFFF800000000000
    if which in (X.SEGBASE_FS, X.SEGBASE_GS_USER, X.SEGBASE_GS_KERNEL) and not canonical:
        return -EINVAL
    if which == X.SEGBASE_FS:
        vcpu.fs_base = base
    elif which == X.SEGBASE_GS_USER:
        vcpu.gs_base_user = base
    elif which == X.SEGBASE_GS_KERNEL:
        vcpu.gs_base_kernel = base
    elif which == X.SEGBASE_GS_USER_SEL:
        selector = base & 0xFFFF
        if selector & ~3:
            return -EINVAL   # only the null selector: xendbg has no user-GS descriptors to load
        vcpu.gs_base_user = 0
    else:
        return -EINVAL
    m.load_segment_bases()
    return 0

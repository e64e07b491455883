"""Xen's own part of every guest address space: the read-only M2P and Xen's private pages.

Real Xen reserves a hole in each PV address space (64-bit: L4 slots 256–271; 32-bit PAE: the top of
the last GiB, from ``HYPERVISOR_COMPAT_VIRT_START`` = 0xF5800000) and fills it with its own mappings
whenever it validates a top-level table. xendbg puts there what the emulated CPU needs:

* the machine-to-phys table, read-only and readable by the guest kernel (ring 3 on pv64, ring 1 on
  pv32), at the address the ABI names;
* the per-vCPU GDT (the guest's ``set_gdt`` frames, then Xen's reserved page with the ``FLAT_*``
  descriptors), mapped read-only: descriptors are installed with their accessed bit already set, so
  the CPU never needs to write them;
* a trampoline page and a stack page used once, to ``iret`` from ring 0 into the guest.

Xen's private pages are supervisor-only. A 64-bit guest (ring 3) cannot touch them at all; a 32-bit
guest (ring 1) could read them, as on real Xen it could not — but they are read-only and hold nothing
secret, and the guest can never map over them, because validation refuses updates to Xen's slots.
"""

from __future__ import annotations

from dataclasses import dataclass

from xendbg.machine.abi.layout import Abi
from xendbg.machine.memory import PAGE_SHIFT, MachineMemory
from xendbg.machine.pagetable import (
    _PAGE_ACCESSED,
    _PAGE_NX,
    _PAGE_PRESENT,
    _PAGE_USER,
    TABLE_FLAGS,
    indexes,
    pte,
)

FIRST_RESERVED_GDT_PAGE = 14
FIRST_RESERVED_GDT_ENTRY = FIRST_RESERVED_GDT_PAGE * 512
GDT_PAGES = 16
GDT_LIMIT = (FIRST_RESERVED_GDT_ENTRY + 512) * 8 - 1

# Xen's reserved descriptors (index - FIRST_RESERVED_GDT_ENTRY → descriptor), accessed bit preset.
# 64-bit guests: 0xe008 ring-0 code64, 0xe010 ring-0 data, 0xe023 ring-3 code32, 0xe02b ring-3
# data, 0xe033 ring-3 code64, 0xe038 ring-0 code32.
GDT_RESERVED_64 = {1: 0x00AF9B000000FFFF, 2: 0x00CF93000000FFFF, 4: 0x00CFFB000000FFFF,
                   5: 0x00CFF3000000FFFF, 6: 0x00AFFB000000FFFF, 7: 0x00CF9B000000FFFF}
# 32-bit guests: 0xe008/0xe010 as above, 0xe019 ring-1 code, 0xe021 ring-1 data, 0xe02b ring-3
# code, 0xe033 ring-3 data, 0xe038 ring-0 code32 (the one the trampoline runs on).
GDT_RESERVED_32 = {1: 0x00AF9B000000FFFF, 2: 0x00CF93000000FFFF, 3: 0x00CFBB000000FFFF,
                   4: 0x00CFB3000000FFFF, 5: 0x00CFFB000000FFFF, 6: 0x00CFF3000000FFFF,
                   7: 0x00CF9B000000FFFF}
RING0_CS_32 = 0xE038
RING0_DS = 0xE010

XEN_PRIVATE_64 = 0xFFFF830000000000     # L4 slot 262
XEN_PRIVATE_32 = 0xFF000000             # inside the compat hypervisor hole
TRAMPOLINE_OFFSET = GDT_PAGES << PAGE_SHIFT
STACK_OFFSET = TRAMPOLINE_OFFSET + 0x1000
UNTIL_OFFSET = TRAMPOLINE_OFFSET + 0x7F1  # an address in the trampoline page never executed

_XEN_RO = _PAGE_PRESENT | _PAGE_ACCESSED


@dataclass
class XenArea:
    """Where Xen's mappings live for one ABI, and the frames behind them."""

    abi: Abi
    private_va: int
    gdt_va: int
    trampoline_va: int
    stack_va: int
    stack_ma: int
    until_va: int
    gdt_reserved_mfn: int
    zero_mfn: int
    gdt_l1_mfn: int                       # the Xen L1 table that maps the GDT pages
    m2p_mfns: list[int]
    # Entries Xen installs in every guest top-level table (pv64: L4 slot → entry) or in the
    # guest's last-GiB L2 (pv32: L2 index → entry).
    slots: dict[int, int]

    def install(self, memory: MachineMemory, table_mfn: int) -> None:
        """Write Xen's slots into a guest L4 (pv64) or the L2 that maps the top GiB (pv32)."""
        base = table_mfn << PAGE_SHIFT
        for index, entry in self.slots.items():
            memory.write_u64(base + index * 8, entry)

    def map_gdt_frames(self, memory: MachineMemory, frames: list[int]) -> None:
        """Map a vCPU's GDT: the guest frames first, a zero page after them, Xen's page 14."""
        base = self.gdt_l1_mfn << PAGE_SHIFT
        for page in range(GDT_PAGES):
            if page < len(frames):
                mfn = frames[page]
            elif page == FIRST_RESERVED_GDT_PAGE:
                mfn = self.gdt_reserved_mfn
            else:
                mfn = self.zero_mfn
            memory.write_u64(base + page * 8, pte(mfn, _XEN_RO | _PAGE_NX))


def build_xen_area(abi: Abi, memory: MachineMemory, alloc_xen, m2p_mfns: list[int]) -> XenArea:
    """Create Xen's private tables and pages with frames from ``alloc_xen()``."""
    is64 = abi.bits == 64
    private_va = XEN_PRIVATE_64 if is64 else XEN_PRIVATE_32
    levels = 4 if is64 else 3
    slots: dict[int, int] = {}
    nx = _PAGE_NX

    def new_table() -> int:
        return alloc_xen()

    # Shared intermediate tables: pv64 keeps one L3 per Xen slot; pv32 has only L1s (the L2 is the
    # guest's own top-GiB L2, into which ``install`` copies Xen's entries).
    l3_for_slot: dict[int, int] = {}
    l2_for: dict[tuple[int, int], int] = {}

    def l1_for(va: int) -> int:
        idx = indexes(va, levels)
        if is64:
            slot, i3, i2 = idx[0], idx[1], idx[2]
            if slot not in l3_for_slot:
                l3_for_slot[slot] = new_table()
                slots[slot] = pte(l3_for_slot[slot], TABLE_FLAGS)
            l3 = l3_for_slot[slot]
            key = (slot, i3)
            if key not in l2_for:
                l2_for[key] = new_table()
                memory.write_u64((l3 << PAGE_SHIFT) + i3 * 8, pte(l2_for[key], TABLE_FLAGS))
            l2 = l2_for[key]
            entry = memory.read_u64((l2 << PAGE_SHIFT) + i2 * 8)
            if entry & _PAGE_PRESENT:
                return entry >> PAGE_SHIFT & 0xFFFFFFFFFF
            l1 = new_table()
            memory.write_u64((l2 << PAGE_SHIFT) + i2 * 8, pte(l1, TABLE_FLAGS))
            return l1
        i2 = idx[1]
        if i2 in slots:
            return slots[i2] >> PAGE_SHIFT & 0xFFFFFFFFFF
        l1 = new_table()
        slots[i2] = pte(l1, TABLE_FLAGS)
        return l1

    def map_page(va: int, mfn: int, flags: int) -> None:
        memory.write_u64((l1_for(va) << PAGE_SHIFT) + indexes(va, levels)[-1] * 8, pte(mfn, flags))

    # The read-only M2P, readable by the guest kernel.
    for i, mfn in enumerate(m2p_mfns):
        map_page(abi.m2p_start + (i << PAGE_SHIFT), mfn, _XEN_RO | _PAGE_USER | nx)

    gdt_reserved = alloc_xen()
    table = GDT_RESERVED_64 if is64 else GDT_RESERVED_32
    for index, desc in table.items():
        memory.write_u64((gdt_reserved << PAGE_SHIFT) + index * 8, desc)
    zero = alloc_xen()
    trampoline = alloc_xen()
    # iretq (48 cf) or iretd (cf); the rest of the page is int3.
    memory.write(trampoline << PAGE_SHIFT, b"\xcc" * 4096)
    memory.write(trampoline << PAGE_SHIFT, b"\x48\xcf" if is64 else b"\xcf")
    stack = alloc_xen()

    gdt_va = private_va
    gdt_l1 = l1_for(gdt_va)
    area = XenArea(
        abi=abi, private_va=private_va, gdt_va=gdt_va,
        trampoline_va=private_va + TRAMPOLINE_OFFSET,
        stack_va=private_va + STACK_OFFSET + 0x800,
        stack_ma=(stack << PAGE_SHIFT) + 0x800,
        until_va=private_va + UNTIL_OFFSET,
        gdt_reserved_mfn=gdt_reserved, zero_mfn=zero, gdt_l1_mfn=gdt_l1,
        m2p_mfns=list(m2p_mfns), slots=slots,
    )
    area.map_gdt_frames(memory, [])
    map_page(area.trampoline_va, trampoline, _XEN_RO)
    map_page(private_va + STACK_OFFSET, stack, _XEN_RO | nx)
    return area

"""Page walk: guest virtual address → machine address, the way the CPU walks PV page tables.

Under Xen's direct paging the guest's tables hold machine addresses, so the walk reads machine memory
directly. Two formats: 4-level long mode (pv64) and 3-level PAE (pv32pae, whose top level is the
4-entry PDPT addressed by cr3 and whose entries carry only P).

The result carries the effective permissions (writable only if every level allows it, user only if
every level allows it, no-execute if any level forbids it) and each level's entry, so the debugger
can show the walk and the hypervisor can decide -EFAULT for a guest pointer.
"""

from __future__ import annotations

import numpy as np

_P = 1 << 0
_RW = 1 << 1
_US = 1 << 2
_PS = 1 << 7
_NX = 1 << 63
ADDR_MASK = 0x000FFFFFFFFFF000

# result flags
WALK_OK = 0
WALK_NOT_PRESENT = 1
WALK_BAD_FRAME = 2      # an entry points outside machine memory
WALK_NONCANONICAL = 3


def walk(mem: np.ndarray, top_ma: int, va: int, levels: int) -> tuple[int, int, int, tuple[int, ...]]:
    """Walk ``va`` from the table at machine address ``top_ma``.

    ``mem`` is machine memory as a flat ``uint8`` array; ``levels`` is 4 (long mode) or 3 (PAE).
    Returns ``(status, ma, perms, entries)``: ``status`` one of ``WALK_*``; ``ma`` the machine
    address of ``va`` when ``status == WALK_OK``; ``perms`` bit 0 writable, bit 1 user, bit 2
    executable; ``entries`` the entry read at each level, top first (as far as the walk got).
    Superpages (PS at L2/L3) are followed, since Xen's own mappings may use them.
    """
    entries: list[int] = []
    size = mem.shape[0]
    if levels == 4:
        top = va >> 47
        if top not in (0, 0x1FFFF):
            return WALK_NONCANONICAL, 0, 0, ()
        shifts = (39, 30, 21, 12)
    else:
        va &= 0xFFFFFFFF
        shifts = (30, 21, 12)
    writable = user = executable = True
    table = top_ma
    for depth, shift in enumerate(shifts):
        if levels == 3 and depth == 0:
            index_ma = (table & ~0x1F) + ((va >> 30) & 3) * 8
        else:
            index_ma = (table & ADDR_MASK) + ((va >> shift) & 511) * 8
        if index_ma + 8 > size:
            return WALK_BAD_FRAME, 0, 0, tuple(entries)
        entry = int(mem[index_ma:index_ma + 8].view("<u8")[0])
        entries.append(entry)
        if not entry & _P:
            return WALK_NOT_PRESENT, 0, 0, tuple(entries)
        if not (levels == 3 and depth == 0):   # PAE PDPTEs carry no RW/US/NX
            writable &= bool(entry & _RW)
            user &= bool(entry & _US)
            executable &= not entry & _NX
        last = shift == 12
        if not last and shift in (21, 30) and entry & _PS and not (levels == 3 and depth == 0):
            page_mask = (1 << shift) - 1
            ma = (entry & ADDR_MASK & ~page_mask) | (va & page_mask)
            if ma >= size:
                return WALK_BAD_FRAME, 0, 0, tuple(entries)
            return WALK_OK, ma, _perms(writable, user, executable), tuple(entries)
        table = entry & ADDR_MASK
        if last:
            ma = table | (va & 0xFFF)
            if ma >= size:
                return WALK_BAD_FRAME, 0, 0, tuple(entries)
            return WALK_OK, ma, _perms(writable, user, executable), tuple(entries)
    raise AssertionError("unreachable")


def _perms(writable: bool, user: bool, executable: bool) -> int:
    return int(writable) | int(user) << 1 | int(executable) << 2

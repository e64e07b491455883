"""Page-table entry formats and a builder for the tables Xen and the domain builder write.

The guest's own updates go through the MMU's validation (``mmu/``); this module only *constructs*
trees, for the start-of-day layout and for Xen's private mappings.
"""

from __future__ import annotations

from collections.abc import Callable

from xendbg.machine.memory import PAGE_SHIFT, MachineMemory

_PAGE_PRESENT = 1 << 0
_PAGE_RW = 1 << 1
_PAGE_USER = 1 << 2
_PAGE_PWT = 1 << 3
_PAGE_PCD = 1 << 4
_PAGE_ACCESSED = 1 << 5
_PAGE_DIRTY = 1 << 6
_PAGE_PSE = 1 << 7
_PAGE_GLOBAL = 1 << 8
_PAGE_NX = 1 << 63
PADDR_MASK = 0x000FFFFFFFFFF000

# Entry flags for table (non-leaf) entries.
TABLE_FLAGS = _PAGE_PRESENT | _PAGE_RW | _PAGE_USER | _PAGE_ACCESSED | _PAGE_DIRTY
PAE_L3_FLAGS = _PAGE_PRESENT   # PDPTEs: RW/US/A/D are reserved


def pte(mfn: int, flags: int) -> int:
    return (mfn << PAGE_SHIFT) | flags


def indexes(va: int, levels: int) -> tuple[int, ...]:
    """Table indexes of ``va``, top level first (4-level: L4..L1; PAE: L3 (2 bits), L2, L1)."""
    if levels == 4:
        return ((va >> 39) & 511, (va >> 30) & 511, (va >> 21) & 511, (va >> 12) & 511)
    return ((va >> 30) & 3, (va >> 21) & 511, (va >> 12) & 511)


class TableBuilder:
    """Fills a page-table tree rooted at ``top_mfn`` in machine memory.

    ``alloc_table(level)`` supplies a zeroed frame for a missing table of that level (L1 = 1); the
    builder records each table it created in ``tables`` as ``(level, mfn)``.
    """

    def __init__(self, memory: MachineMemory, levels: int, top_mfn: int,
                 alloc_table: Callable[[int], int]) -> None:
        self.memory = memory
        self.levels = levels
        self.top_mfn = top_mfn
        self.alloc_table = alloc_table
        self.tables: list[tuple[int, int]] = [(levels, top_mfn)]

    def _entry_flags(self, level: int) -> int:
        # ``level`` is the level of the table holding the entry.
        if self.levels == 3 and level == 3:
            return PAE_L3_FLAGS
        return TABLE_FLAGS

    def table_for(self, va: int, leaf_level: int = 1) -> int:
        """The mfn of the level-``leaf_level`` table covering ``va``, creating tables on the way."""
        idx = indexes(va, self.levels)
        mfn = self.top_mfn
        level = self.levels
        for i in idx[: self.levels - leaf_level]:
            ma = (mfn << PAGE_SHIFT) + i * 8
            entry = self.memory.read_u64(ma)
            if entry & _PAGE_PRESENT:
                mfn = (entry & PADDR_MASK) >> PAGE_SHIFT
            else:
                new = self.alloc_table(level - 1)
                self.tables.append((level - 1, new))
                self.memory.write_u64(ma, pte(new, self._entry_flags(level)))
                mfn = new
            level -= 1
        return mfn

    def map(self, va: int, mfn: int, flags: int) -> None:
        l1 = self.table_for(va)
        self.memory.write_u64((l1 << PAGE_SHIFT) + indexes(va, self.levels)[-1] * 8, pte(mfn, flags))

    def set_entry(self, level: int, va: int, value: int) -> None:
        """Write the raw entry for ``va`` in the level-``level`` table (creating the path)."""
        table = self.table_for(va, level)
        self.memory.write_u64((table << PAGE_SHIFT) + indexes(va, self.levels)[self.levels - level] * 8,
                              value)


def count_tables(ranges: list[tuple[int, int]], levels: int) -> int:
    """How many tables below the top level are needed to map the VA ranges ``[start, end)``.

    A level-N table (N < top) covers ``1 << shift`` bytes with shift 21 (L1), 30 (L2), 39 (L3).
    The count merges each level's runs of table indexes instead of enumerating them, so it costs
    O(ranges) whatever the span: the builder sizes its layout with it before it knows whether a
    (possibly hostile) kernel's span fits in the domain at all.
    """
    shifts = (21, 30, 39)[: levels - 1]
    total = 0
    for shift in shifts:
        runs = sorted((start >> shift, (end - 1) >> shift) for start, end in ranges if end > start)
        last = -1                          # the highest table index counted so far
        for first, final in runs:
            first = max(first, last + 1)
            if final >= first:
                total += final - first + 1
                last = final
    return total

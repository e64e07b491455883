"""Validation of an L1 page table (Xen's ``promote_l1_table`` / ``demote_l1_table`` inner loops).

This is the hot part of pinning: a 256 MiB guest has some 130 L1 tables of 512 entries, every
present entry of which takes a reference on the frame it maps (and a *writable* type reference
when it maps the frame writable). The rules themselves are described in
``xendbg.machine.mmu.page_types``; this module is only the loop, on plain arrays, so that a
compiled twin (``_validate_c``) can replace it entry for entry.

The frame table is passed as separate per-frame arrays, all indexed by mfn and all the same
length (the number of machine frames):

======================  ===========  ====================================================
``owner``               ``uint16``   owning domain id (``MachineMemory.owner``)
``count``               ``int32``    total references (Xen's ``count_info``)
``type_``               ``uint8``    page type code (``T_*`` below; 0x10 bit: PAE Xen L2)
``type_count``          ``int32``    references of the current type
``flags``               ``uint8``    ``F_*`` bits (validated, pinned, allocated, …)
======================  ===========  ====================================================

Both functions mutate those arrays in place and never raise for any guest-controlled value
(an entry may hold anything); they raise only if the arrays themselves have the wrong shape.
"""

from __future__ import annotations

import numpy as np

# Page-table entry bits used here.
PTE_PRESENT = 1 << 0
PTE_RW = 1 << 1
ADDR_MASK = 0x000FFFFFFFFFF000
INVALID_ENTRY_MFN = ADDR_MASK >> 12      # Xen's "INVALID_MFN" as it appears in an entry

# Type codes (the frame table's ``type_``), shared with ``machine.mmu.page_types``.
T_NONE = 0
T_L1 = 1
T_L2 = 2
T_L3 = 3
T_L4 = 4
T_SEG_DESC = 5
T_WRITABLE = 6
T_PAE_XEN_L2 = 0x10                      # ORed into T_L2 (Xen's PGT_pae_xen_l2)

# ``flags`` bits.
F_VALIDATED = 1
F_PINNED = 2
F_ALLOCATED = 4
F_XEN_HEAP = 8

# Why ``validate_l1`` stopped (0: it did not).
OK = 0
BAD_FLAGS = 1        # a disallowed bit is set                                  (-EINVAL)
NO_SUCH_FRAME = 2    # the mfn is beyond machine memory: an MMIO attempt        (-EPERM)
INVALID_MFN = 3      # the mfn field is all ones (Xen's INVALID_MFN)            (-EINVAL)
NOT_OWNER = 4        # the frame is not an allocated frame of ``domid``         (-EBUSY)
WRITABLE_TYPE = 5    # mapped writable, but the frame is in use with another type (-EBUSY)


def validate_l1(entries: np.ndarray, domid: int, disallow: int, adjust: int,
                owner: np.ndarray, count: np.ndarray, type_: np.ndarray,
                type_count: np.ndarray, flags: np.ndarray,
                changed: np.ndarray) -> tuple[int, int, int]:
    """Take the references that the entries of an L1 table hold; stop at the first bad entry.

    ``entries`` is a ``<u8`` array (usually the live 512-entry view of the table's frame; any
    length works). Entries are examined in index order; an entry without the present bit is
    skipped. A present entry ``e`` maps ``mfn = (e & ADDR_MASK) >> 12`` and is *bad* when, in this
    order of precedence:

    1. ``e & disallow`` is not 0                                            → ``BAD_FLAGS``;
    2. ``mfn >= len(owner)``: ``INVALID_MFN`` if ``mfn == INVALID_ENTRY_MFN``, else ``NO_SUCH_FRAME``;
    3. ``owner[mfn] != domid`` or ``count[mfn] == 0``                         → ``NOT_OWNER``;
    4. ``e`` has ``PTE_RW`` and ``type_count[mfn] > 0`` and ``type_[mfn] != T_WRITABLE``
                                                                             → ``WRITABLE_TYPE``.

    The checks see the frame table as it was on entry (taking the references of earlier entries
    never makes a later entry bad or good, so the result is the same as a sequential walk).

    If entry ``k`` is the first bad one, exactly the present entries before ``k`` take their
    references; if none is bad, all present entries do. Taking the references of entry ``e``:
    ``count[mfn] += 1``; and if ``e`` has ``PTE_RW``: if ``type_[mfn] != T_WRITABLE`` (its type
    count is then 0) the frame's type becomes ``T_WRITABLE`` with ``F_VALIDATED`` set in
    ``flags[mfn]``, and ``type_count[mfn] += 1``. Each of those entries also gets ``adjust`` ORed
    into it, in ``entries`` (Xen's ``adjust_guest_l1e``: ``_PAGE_USER`` for 64-bit guests, 0 for
    32-bit ones). Nothing else changes.

    ``changed`` (an ``int64`` array of shape ``(2, m)``, ``m >= len(entries)``) receives the frames
    whose type changed to writable, each once, in ascending mfn order: ``changed[0, j]`` the mfn,
    ``changed[1, j]`` its type code before the change (for the history).

    Returns ``(reason, index, nchanged)``: ``reason`` is ``OK`` or the reason code of entry
    ``index`` (``index`` is ``len(entries)`` when ``reason == OK``); ``nchanged`` is the number of
    mfns written to ``changed``.
    """
    n = len(entries)
    present = np.flatnonzero(entries & np.uint64(PTE_PRESENT))
    if len(present) == 0:
        return OK, n, 0
    vals = entries[present]
    mfns = ((vals & np.uint64(ADDR_MASK)) >> np.uint64(12)).astype(np.int64)
    nr = len(owner)
    in_range = mfns < nr
    safe = np.where(in_range, mfns, 0)
    rw = (vals & np.uint64(PTE_RW)) != 0

    bad_flags = (vals & np.uint64(disallow)) != 0
    bad_range = ~in_range
    bad_owner = in_range & ((owner[safe] != domid) | (count[safe] == 0))
    bad_type = in_range & rw & (type_count[safe] > 0) & (type_[safe] != T_WRITABLE)
    bad = bad_flags | bad_range | bad_owner | bad_type

    reason = OK
    index = n
    take = len(present)
    if bad.any():
        p = int(np.argmax(bad))
        take = p
        index = int(present[p])
        if bad_flags[p]:
            reason = BAD_FLAGS
        elif bad_range[p]:
            reason = INVALID_MFN if int(mfns[p]) == INVALID_ENTRY_MFN else NO_SUCH_FRAME
        elif bad_owner[p]:
            reason = NOT_OWNER
        else:
            reason = WRITABLE_TYPE

    nchanged = 0
    if take:
        held = mfns[:take]
        np.add.at(count, held, 1)
        writable = held[rw[:take]]
        if len(writable):
            newly = np.unique(writable[type_[writable] != T_WRITABLE])
            nchanged = len(newly)
            if nchanged:
                changed[0, :nchanged] = newly
                changed[1, :nchanged] = type_[newly]
                type_[newly] = T_WRITABLE
                flags[newly] |= F_VALIDATED
            np.add.at(type_count, writable, 1)
        if adjust:
            entries[present[:take]] |= np.uint64(adjust)
    return reason, index, nchanged


def devalidate_l1(entries: np.ndarray, count: np.ndarray, type_count: np.ndarray,
                  zeroed: np.ndarray) -> int:
    """Drop the references that the present entries of a validated L1 table hold.

    The inverse of a successful :func:`validate_l1`: for every present entry ``e`` (in ``entries``,
    a ``<u8`` array) mapping ``mfn`` (entries beyond ``len(count)`` are ignored): ``count[mfn] -= 1``,
    and if ``e`` has ``PTE_RW``, ``type_count[mfn] -= 1``. Types are not changed (a frame keeps its
    type when its type count drops to 0, as in Xen).

    ``zeroed`` (``int64``, at least as long as ``entries``) receives, in ascending order and each
    once, the mfns whose ``count`` is 0 afterwards: the caller frees them. Returns how many.
    """
    present = np.flatnonzero(entries & np.uint64(PTE_PRESENT))
    if len(present) == 0:
        return 0
    vals = entries[present]
    mfns = ((vals & np.uint64(ADDR_MASK)) >> np.uint64(12)).astype(np.int64)
    keep = mfns < len(count)
    mfns = mfns[keep]
    rw = ((vals[keep] & np.uint64(PTE_RW)) != 0)
    np.subtract.at(count, mfns, 1)
    if rw.any():
        np.subtract.at(type_count, mfns[rw], 1)
    gone = np.unique(mfns[count[mfns] == 0])
    zeroed[:len(gone)] = gone
    return len(gone)

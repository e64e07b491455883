# cython: language_level=3, boundscheck=False, wraparound=False, initializedcheck=False
"""Compiled twin of ``_validate_py`` (see there for the documentation)."""

from libc.stdint cimport int32_t, int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.stdlib cimport free, malloc, qsort

cdef enum:
    C_OK = 0
    C_BAD_FLAGS = 1
    C_NO_SUCH_FRAME = 2
    C_INVALID_MFN = 3
    C_NOT_OWNER = 4
    C_WRITABLE_TYPE = 5

cdef uint64_t PTE_PRESENT = 1
cdef uint64_t PTE_RW = 1 << 1
cdef uint64_t ADDR_MASK = 0x000FFFFFFFFFF000ULL
cdef uint64_t INVALID_ENTRY_MFN = 0x000FFFFFFFFFF000ULL >> 12
cdef uint8_t T_WRITABLE = 6
cdef uint8_t F_VALIDATED = 1

cdef struct Change:
    int64_t mfn
    int64_t old_type


cdef int _cmp_change(const void *a, const void *b) noexcept nogil:
    cdef int64_t x = (<const Change *>a).mfn
    cdef int64_t y = (<const Change *>b).mfn
    return (x > y) - (x < y)


cdef int _cmp_i64(const void *a, const void *b) noexcept nogil:
    cdef int64_t x = (<const int64_t *>a)[0]
    cdef int64_t y = (<const int64_t *>b)[0]
    return (x > y) - (x < y)


cdef bint _sorted_i64(const int64_t *values, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t i
    for i in range(1, n):
        if values[i] < values[i - 1]:
            return False
    return True


cdef bint _changes_sorted(const Change *changes, Py_ssize_t n) noexcept nogil:
    # A direct map lists its frames in order: skip the sort then (it would be most of the time).
    cdef Py_ssize_t i
    for i in range(1, n):
        if changes[i].mfn < changes[i - 1].mfn:
            return False
    return True


cdef inline int32_t _inc(int32_t v) noexcept nogil:
    # numpy's wrap-around at the int32 limits, without C's signed-overflow UB.
    return <int32_t>(<uint32_t>v + 1u)


cdef inline int32_t _dec(int32_t v) noexcept nogil:
    return <int32_t>(<uint32_t>v - 1u)


cdef Py_ssize_t _first_bad(const uint64_t[:] entries, int64_t domid, uint64_t disallow,
                           const uint16_t[:] owner, const int32_t[:] count,
                           const uint8_t[:] type_, const int32_t[:] type_count,
                           int *reason) noexcept nogil:
    # The checks run over the frame table as it was on entry (a separate pass, before any
    # reference is taken), so corrupt counts give the twin's answer too.
    cdef Py_ssize_t i, n = entries.shape[0]
    cdef uint64_t e, mfn, nr = <uint64_t>owner.shape[0]
    for i in range(n):
        e = entries[i]
        if not e & PTE_PRESENT:
            continue
        mfn = (e & ADDR_MASK) >> 12
        if e & disallow:
            reason[0] = C_BAD_FLAGS
            return i
        if mfn >= nr:
            reason[0] = C_INVALID_MFN if mfn == INVALID_ENTRY_MFN else C_NO_SUCH_FRAME
            return i
        if <int64_t>owner[mfn] != domid or count[mfn] == 0:
            reason[0] = C_NOT_OWNER
            return i
        if e & PTE_RW and type_count[mfn] > 0 and type_[mfn] != T_WRITABLE:
            reason[0] = C_WRITABLE_TYPE
            return i
    reason[0] = C_OK
    return n


def validate_l1(entries, domid, disallow, adjust, owner, count, type_, type_count, flags,
                changed):
    cdef uint64_t[:] ents = entries
    cdef const uint16_t[:] own = owner
    cdef int32_t[:] cnt = count
    cdef uint8_t[:] typ = type_
    cdef int32_t[:] tcnt = type_count
    cdef uint8_t[:] flg = flags
    cdef int64_t[:, :] chg = changed
    cdef int64_t c_domid = domid
    cdef uint64_t c_disallow = disallow, c_adjust = adjust
    cdef Py_ssize_t n = ents.shape[0], nr = own.shape[0], take, i, nch = 0
    cdef uint64_t e, mfn
    cdef int reason = C_OK
    cdef Change *changes
    if cnt.shape[0] < nr or typ.shape[0] < nr or tcnt.shape[0] < nr or flg.shape[0] < nr:
        raise ValueError("the frame-table arrays are shorter than owner")
    changes = <Change *>malloc(max(n, 1) * sizeof(Change))
    if changes == NULL:
        raise MemoryError()
    try:
        with nogil:
            take = _first_bad(ents, c_domid, c_disallow, own, cnt, typ, tcnt, &reason)
            for i in range(take):
                e = ents[i]
                if not e & PTE_PRESENT:
                    continue
                mfn = (e & ADDR_MASK) >> 12
                cnt[mfn] = _inc(cnt[mfn])
                if e & PTE_RW:
                    if typ[mfn] != T_WRITABLE:
                        changes[nch].mfn = <int64_t>mfn
                        changes[nch].old_type = typ[mfn]
                        nch += 1
                        typ[mfn] = T_WRITABLE
                        flg[mfn] |= F_VALIDATED
                    tcnt[mfn] = _inc(tcnt[mfn])
                if c_adjust:
                    ents[i] = e | c_adjust
            if nch > 1 and not _changes_sorted(changes, nch):
                qsort(changes, nch, sizeof(Change), _cmp_change)
        if nch and (chg.shape[0] < 2 or chg.shape[1] < nch):
            raise ValueError(f"changed has shape ({chg.shape[0]}, {chg.shape[1]}); "
                             f"{nch} changes need (2, {nch})")
        for i in range(nch):
            chg[0, i] = changes[i].mfn
            chg[1, i] = changes[i].old_type
    finally:
        free(changes)
    return reason, take, nch            # take == n when no entry is bad


def devalidate_l1(entries, count, type_count, zeroed):
    cdef const uint64_t[:] ents = entries
    cdef int32_t[:] cnt = count
    cdef int32_t[:] tcnt = type_count
    cdef int64_t[:] zer = zeroed
    cdef Py_ssize_t n = ents.shape[0], i, k = 0, nzero = 0
    cdef uint64_t e, mfn, nr = <uint64_t>cnt.shape[0]
    cdef int64_t *gone
    if <uint64_t>tcnt.shape[0] < nr:
        raise ValueError("type_count is shorter than count")
    gone = <int64_t *>malloc(max(n, 1) * sizeof(int64_t))
    if gone == NULL:
        raise MemoryError()
    try:
        with nogil:
            for i in range(n):
                e = ents[i]
                if not e & PTE_PRESENT:
                    continue
                mfn = (e & ADDR_MASK) >> 12
                if mfn >= nr:           # never a reference: validation refuses such entries
                    continue
                cnt[mfn] = _dec(cnt[mfn])
                if e & PTE_RW:
                    tcnt[mfn] = _dec(tcnt[mfn])
            # The frames left without a reference, once each, ascending: the caller frees them.
            for i in range(n):
                e = ents[i]
                if not e & PTE_PRESENT:
                    continue
                mfn = (e & ADDR_MASK) >> 12
                if mfn < nr and cnt[mfn] == 0:
                    gone[k] = <int64_t>mfn
                    k += 1
            if k > 1 and not _sorted_i64(gone, k):
                qsort(gone, k, sizeof(int64_t), _cmp_i64)
            for i in range(k):
                if nzero == 0 or gone[i] != gone[nzero - 1]:
                    gone[nzero] = gone[i]
                    nzero += 1
        if nzero > zer.shape[0]:
            raise ValueError(f"zeroed holds {zer.shape[0]} mfns; {nzero} frames lost their "
                             "last reference")
        for i in range(nzero):
            zer[i] = gone[i]
    finally:
        free(gone)
    return nzero

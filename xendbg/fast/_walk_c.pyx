# cython: language_level=3, boundscheck=False, wraparound=False, initializedcheck=False
"""Compiled twin of ``_walk_py`` (see there for the documentation)."""

from libc.stdint cimport uint8_t, uint64_t

cdef enum:
    C_WALK_OK = 0
    C_WALK_NOT_PRESENT = 1
    C_WALK_BAD_FRAME = 2
    C_WALK_NONCANONICAL = 3

WALK_OK = C_WALK_OK
WALK_NOT_PRESENT = C_WALK_NOT_PRESENT
WALK_BAD_FRAME = C_WALK_BAD_FRAME
WALK_NONCANONICAL = C_WALK_NONCANONICAL

cdef uint64_t _P = 1
cdef uint64_t _RW = 1 << 1
cdef uint64_t _US = 1 << 2
cdef uint64_t _PS = 1 << 7
cdef uint64_t _NX = 1ULL << 63
cdef uint64_t ADDR_MASK = 0x000FFFFFFFFFF000ULL
cdef uint64_t _MASK64 = 0xFFFFFFFFFFFFFFFFULL


cdef inline uint64_t _load_le64(const uint8_t[::1] mem, uint64_t at) noexcept nogil:
    # Byte by byte so that the result is little-endian whatever the host; compilers turn this
    # into a single load on x86.
    return (<uint64_t>mem[at] | <uint64_t>mem[at + 1] << 8 | <uint64_t>mem[at + 2] << 16
            | <uint64_t>mem[at + 3] << 24 | <uint64_t>mem[at + 4] << 32
            | <uint64_t>mem[at + 5] << 40 | <uint64_t>mem[at + 6] << 48
            | <uint64_t>mem[at + 7] << 56)


cdef struct Walk:
    int status
    uint64_t ma
    int perms
    int depth               # number of entries read
    uint64_t entries[4]


cdef void _walk(const uint8_t[::1] mem, uint64_t top_ma, uint64_t va, int levels,
                Walk *w) noexcept nogil:
    cdef uint64_t size = <uint64_t>mem.shape[0]
    cdef int shifts[4]
    cdef int nlevels, depth, shift
    cdef bint pae = levels == 3
    cdef bint pae_top
    cdef bint writable = True, user = True, executable = True
    cdef uint64_t table = top_ma, index_ma, entry, page_mask, ma = 0
    w.depth = 0
    w.ma = 0
    w.perms = 0
    if levels == 4:
        if (va >> 47) != 0 and (va >> 47) != 0x1FFFF:
            w.status = C_WALK_NONCANONICAL
            return
        shifts[0] = 39; shifts[1] = 30; shifts[2] = 21; shifts[3] = 12
        nlevels = 4
    else:
        # Any other ``levels`` walks like PAE below the top, as the twin does.
        va &= 0xFFFFFFFFULL
        shifts[0] = 30; shifts[1] = 21; shifts[2] = 12
        nlevels = 3
    for depth in range(nlevels):
        shift = shifts[depth]
        pae_top = pae and depth == 0
        if pae_top:
            # cr3 of a PAE guest is only 32-byte aligned; guard the sum against wrapping.
            index_ma = table & ~(<uint64_t>0x1F)
            if index_ma >= size:
                w.status = C_WALK_BAD_FRAME
                return
            index_ma += ((va >> 30) & 3) * 8
        else:
            index_ma = (table & ADDR_MASK) + ((va >> shift) & 511) * 8
        if index_ma + 8 > size:
            w.status = C_WALK_BAD_FRAME
            return
        entry = _load_le64(mem, index_ma)
        w.entries[depth] = entry
        w.depth = depth + 1
        if not entry & _P:
            w.status = C_WALK_NOT_PRESENT
            return
        if not pae_top:
            writable = writable and (entry & _RW) != 0
            user = user and (entry & _US) != 0
            executable = executable and (entry & _NX) == 0
        if shift != 12 and (shift == 21 or shift == 30) and (entry & _PS) and not pae_top:
            page_mask = ((<uint64_t>1) << shift) - 1
            ma = (entry & ADDR_MASK & ~page_mask) | (va & page_mask)
            break
        table = entry & ADDR_MASK
        if shift == 12:
            ma = table | (va & 0xFFF)
            break
    if ma >= size:
        w.status = C_WALK_BAD_FRAME
        return
    w.status = C_WALK_OK
    w.ma = ma
    w.perms = <int>writable | (<int>user) << 1 | (<int>executable) << 2


def walk(mem, top_ma, va, levels):
    cdef const uint8_t[::1] view = mem
    cdef int c_levels = levels
    cdef uint64_t c_va, c_top
    cdef Walk w
    # Python ints outside 64 bits: decide what the twin's arbitrary-precision arithmetic decides,
    # once, then walk with C integers.
    try:
        c_va = va
    except OverflowError:
        if c_levels == 4:
            return C_WALK_NONCANONICAL, 0, 0, ()     # negative or beyond 2**64: never canonical
        c_va = va & 0xFFFFFFFF
    try:
        c_top = top_ma
    except OverflowError:
        if c_levels == 3:
            # A PAE cr3 beyond 64 bits is beyond memory; a negative one is not a machine
            # address either (the twin would index its array from the end).
            return C_WALK_BAD_FRAME, 0, 0, ()
        c_top = top_ma & ADDR_MASK
    with nogil:
        _walk(view, c_top, c_va, c_levels, &w)
    entries = tuple([w.entries[i] for i in range(w.depth)])
    if w.status != C_WALK_OK:
        return w.status, 0, 0, entries
    return w.status, w.ma, w.perms, entries

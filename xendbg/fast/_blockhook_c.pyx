# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Compiled twin of ``_blockhook_py`` (see there for the documentation and the rules).

The hook runs once per executed basic block, so its cost is the whole price of counting: at 32
instructions a block, bare Unicorn spends about 6 ns per block, and every nanosecond here is ~15 %
of the guest's speed. The hit path therefore touches two cache lines (the state and one cache
entry), takes no lock, calls nothing, and never needs the GIL:

* **the stop test first**: one compare against ``limit`` (the budget, or UINT64_MAX for none) and
  one flag; a stop does not count the block, which Unicorn does not execute after ``uc_emu_stop``;
* **a direct-mapped front cache** of ``FRONT`` entries, indexed by a fold of the block address
  (code addresses are well spread in their low bits; the fold separates blocks at the same offset
  of neighbouring pages). An entry is ``(address, size, count)`` in 16 bytes, so a hit is one line;
* behind it, **the complete table**: open addressing with linear probing over the same entries
  (a multiplicative hash, grown at half full), consulted on a front miss and refilling the front;
* only a block never seen before reaches Python (``icount_of`` decodes it with capstone).
"""

import ctypes

from libc.stdint cimport uint32_t, uint64_t, uintptr_t
from libc.stdlib cimport calloc, free
from libc.string cimport memset

from unicorn import UC_HOOK_BLOCK
from unicorn.unicorn_py3.unicorn import uclib

cdef enum:
    C_STOP_NONE = 0
    C_STOP_BUDGET = 1
    C_STOP_REQUEST = 2

STOP_NONE = C_STOP_NONE
STOP_BUDGET = C_STOP_BUDGET
STOP_REQUEST = C_STOP_REQUEST

cdef enum:
    FRONT_BITS = 12
    FRONT = 1 << FRONT_BITS          # 4096 entries, 64 KiB: a kernel's hot blocks fit
    TABLE_BITS = 14                  # initial size of the complete table (grows)

cdef uint64_t NO_LIMIT = 0xFFFFFFFFFFFFFFFFULL

ctypedef int (*emu_stop_fn)(void *uc) noexcept nogil

cdef struct Entry:
    uint64_t address
    uint32_t size
    uint32_t count                   # 0: empty (a block always counts at least 1)

cdef struct State
ctypedef void (*miss_fn)(State *s, Entry *slot, uint64_t address, uint32_t size) noexcept nogil

cdef struct State:
    # written on every block: together at the start of the struct (one cache line)
    uint64_t insns
    uint64_t blocks
    uint64_t limit                   # stop at the first block that starts with insns >= limit
    int stop_request                 # set by any thread: stop at the next block
    int stop_reason
    Entry *front
    miss_fn miss                     # _miss, called through a pointer so that the compiler cannot
                                     # inline it: inlined, its frame set-up (six saved registers,
                                     # a 200-byte frame) ran on every block, hit or not
    # the miss path
    Entry *table
    uint64_t mask
    uint64_t used
    emu_stop_fn emu_stop
    void *owner


cdef inline uint64_t _front_index(uint64_t address) noexcept nogil:
    return (address ^ (address >> FRONT_BITS)) & (FRONT - 1)


cdef inline uint64_t _table_index(uint64_t address, uint64_t mask) noexcept nogil:
    address ^= address >> 29
    address *= 0xBF58476D1CE4E5B9ULL
    return (address ^ (address >> 32)) & mask


cdef int _grow(State *s) noexcept nogil:
    cdef uint64_t n = (s.mask + 1) * 2
    cdef Entry *old = s.table
    cdef Entry *new = <Entry *>calloc(n, sizeof(Entry))
    cdef uint64_t i, j
    if new == NULL:
        return -1                    # stays at its size: slower probing, still correct
    for i in range(s.mask + 1):
        if old[i].count:
            j = _table_index(old[i].address, n - 1)
            while new[j].count:
                j = (j + 1) & (n - 1)
            new[j] = old[i]
    s.table = new
    s.mask = n - 1
    free(old)
    return 0


cdef uint32_t _icount(State *s, uint64_t address, uint32_t size) noexcept with gil:
    cdef object owner = <object>s.owner
    cdef uint64_t count
    try:
        count = owner._icount_of(address, size)
    except BaseException as exc:  # an exception must not unwind through unicorn's C frames
        owner._hook_error = exc
        return 1
    return <uint32_t>count if 1 <= count <= 0xFFFFFFFF else 1


cdef void _miss(State *s, Entry *slot, uint64_t address, uint32_t size) noexcept nogil:
    """The front cache missed: find the block in the table (decode it if new), refill ``slot``,
    count the block."""
    cdef uint64_t j = _table_index(address, s.mask)
    cdef uint64_t probes
    cdef Entry *e
    for probes in range(s.mask + 1):
        e = &s.table[j]
        if e.count == 0:
            e.count = _icount(s, address, size)
            e.address = address
            e.size = size
            s.used += 1
            slot[0] = e[0]
            if s.used * 2 > s.mask:
                _grow(s)
            break
        if e.address == address and e.size == size:
            slot[0] = e[0]
            break
        j = (j + 1) & s.mask
    else:
        # A full table (it could not grow: out of memory): the front cache alone remembers it.
        slot.count = _icount(s, address, size)
        slot.address = address
        slot.size = size
    s.insns += slot.count
    s.blocks += 1


cdef void _block_hook(void *uc, uint64_t address, uint32_t size, void *user_data) noexcept nogil:
    cdef State *s = <State *>user_data
    cdef Entry *e
    if s.insns >= s.limit or s.stop_request:
        # Unicorn will not execute this block: it is not counted (see the twin).
        if s.stop_request:
            s.stop_request = 0
            s.stop_reason = C_STOP_REQUEST
        else:
            s.stop_reason = C_STOP_BUDGET
        s.emu_stop(uc)
        return
    e = &s.front[_front_index(address)]
    if e.address == address and e.size == size and e.count != 0:
        s.insns += e.count
        s.blocks += 1
    else:
        s.miss(s, e, address, size)     # counts the block (a tail call: no frame on the hit path)


cdef class BlockCounter:
    cdef State *s
    cdef object _uc
    cdef object _handle
    cdef public object _icount_of
    cdef public object _hook_error

    def __cinit__(self):
        self.s = <State *>calloc(1, sizeof(State))
        if self.s == NULL:
            raise MemoryError()
        self.s.limit = NO_LIMIT
        self.s.miss = _miss
        self.s.mask = (1 << TABLE_BITS) - 1
        self.s.front = <Entry *>calloc(FRONT, sizeof(Entry))
        self.s.table = <Entry *>calloc(self.s.mask + 1, sizeof(Entry))
        if self.s.front == NULL or self.s.table == NULL:
            raise MemoryError()

    def __init__(self, uc, icount_of):
        self._uc = uc
        self._icount_of = icount_of
        self._hook_error = None
        self._handle = None
        self.s.owner = <void *>self
        self.s.emu_stop = <emu_stop_fn><uintptr_t>ctypes.cast(uclib.uc_emu_stop, ctypes.c_void_p).value

    def __dealloc__(self):
        if self.s != NULL:
            free(self.s.front)
            free(self.s.table)
            free(self.s)

    def install(self):
        if self._handle is not None:
            return
        handle = ctypes.c_size_t()
        err = uclib.uc_hook_add(self._uc._uch, ctypes.byref(handle), UC_HOOK_BLOCK,
                                ctypes.c_void_p(<uintptr_t>&_block_hook),
                                ctypes.c_void_p(<uintptr_t>self.s),
                                ctypes.c_uint64(1), ctypes.c_uint64(0))
        if err:
            raise RuntimeError(f"uc_hook_add(UC_HOOK_BLOCK) failed: {err}")
        self._handle = handle

    def remove(self):
        if self._handle is not None:
            uclib.uc_hook_del(self._uc._uch, self._handle)
            self._handle = None

    def request_stop(self):
        self.s.stop_request = 1

    def clear_stop(self):
        self.s.stop_request = 0
        self.s.stop_reason = C_STOP_NONE

    def flush_cache(self):
        memset(self.s.front, 0, FRONT * sizeof(Entry))
        memset(self.s.table, 0, (self.s.mask + 1) * sizeof(Entry))
        self.s.used = 0

    def cached_blocks(self):
        return self.s.used

    @property
    def insns(self):
        return self.s.insns

    @insns.setter
    def insns(self, value):
        self.s.insns = value

    @property
    def blocks(self):
        return self.s.blocks

    @blocks.setter
    def blocks(self, value):
        self.s.blocks = value

    @property
    def budget(self):
        return 0 if self.s.limit == NO_LIMIT else self.s.limit

    @budget.setter
    def budget(self, value):
        self.s.limit = value if value else NO_LIMIT

    @property
    def stop_reason(self):
        return self.s.stop_reason

    @stop_reason.setter
    def stop_reason(self, value):
        self.s.stop_reason = value

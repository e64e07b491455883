# cython: language_level=3, boundscheck=False, wraparound=False
"""Compiled twin of ``_blockhook_py`` (see there for the documentation)."""

import ctypes

from libc.stdint cimport uint32_t, uint64_t, uintptr_t
from libc.stdlib cimport calloc, free

from unicorn import UC_HOOK_BLOCK
from unicorn.unicorn_py3.unicorn import uclib

cdef enum:
    C_STOP_NONE = 0
    C_STOP_BUDGET = 1
    C_STOP_REQUEST = 2

STOP_NONE = C_STOP_NONE
STOP_BUDGET = C_STOP_BUDGET
STOP_REQUEST = C_STOP_REQUEST

ctypedef int (*emu_stop_fn)(void *uc) noexcept nogil

cdef struct State:
    uint64_t insns
    uint64_t blocks
    uint64_t budget
    int stop_request
    int stop_reason
    uint64_t *keys          # block address + 1 (0 = empty slot)
    uint32_t *sizes
    uint32_t *counts
    uint64_t mask
    uint64_t used
    emu_stop_fn emu_stop
    void *owner


cdef uint64_t _slot(uint64_t address) noexcept nogil:
    address ^= address >> 29
    address *= 0xBF58476D1CE4E5B9ULL
    address ^= address >> 32
    return address


cdef int _grow(State *s) noexcept nogil:
    cdef uint64_t old_mask = s.mask
    cdef uint64_t *old_keys = s.keys
    cdef uint32_t *old_sizes = s.sizes
    cdef uint32_t *old_counts = s.counts
    cdef uint64_t n = (old_mask + 1) * 2
    cdef uint64_t i, j
    s.keys = <uint64_t *>calloc(n, sizeof(uint64_t))
    s.sizes = <uint32_t *>calloc(n, sizeof(uint32_t))
    s.counts = <uint32_t *>calloc(n, sizeof(uint32_t))
    if s.keys == NULL or s.sizes == NULL or s.counts == NULL:
        free(s.keys); free(s.sizes); free(s.counts)
        s.keys = old_keys; s.sizes = old_sizes; s.counts = old_counts
        return -1
    s.mask = n - 1
    for i in range(old_mask + 1):
        if old_keys[i]:
            j = _slot(old_keys[i] - 1) & s.mask
            while s.keys[j]:
                j = (j + 1) & s.mask
            s.keys[j] = old_keys[i]
            s.sizes[j] = old_sizes[i]
            s.counts[j] = old_counts[i]
    free(old_keys); free(old_sizes); free(old_counts)
    return 0


cdef uint32_t _miss(State *s, uint64_t address, uint32_t size) noexcept with gil:
    cdef object owner = <object>s.owner
    try:
        return <uint32_t>owner._icount_of(address, size)
    except BaseException as exc:  # an exception must not unwind through unicorn's C frames
        owner._hook_error = exc
        return 1


cdef void _block_hook(void *uc, uint64_t address, uint32_t size, void *user_data) noexcept nogil:
    cdef State *s = <State *>user_data
    cdef uint64_t j = _slot(address) & s.mask
    cdef uint32_t count
    while True:
        if s.keys[j] == address + 1 and s.sizes[j] == size:
            count = s.counts[j]
            break
        if s.keys[j] == 0:
            count = _miss(s, address, size)
            s.keys[j] = address + 1
            s.sizes[j] = size
            s.counts[j] = count
            s.used += 1
            if s.used * 2 > s.mask:
                _grow(s)
            break
        j = (j + 1) & s.mask
    s.insns += count
    s.blocks += 1
    if s.stop_request:
        s.stop_request = 0
        s.stop_reason = C_STOP_REQUEST
        s.emu_stop(uc)
    elif s.budget and s.insns >= s.budget:
        s.stop_reason = C_STOP_BUDGET
        s.emu_stop(uc)


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
        self.s.mask = (1 << 16) - 1
        self.s.keys = <uint64_t *>calloc(self.s.mask + 1, sizeof(uint64_t))
        self.s.sizes = <uint32_t *>calloc(self.s.mask + 1, sizeof(uint32_t))
        self.s.counts = <uint32_t *>calloc(self.s.mask + 1, sizeof(uint32_t))
        if self.s.keys == NULL or self.s.sizes == NULL or self.s.counts == NULL:
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
            free(self.s.keys); free(self.s.sizes); free(self.s.counts)
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
        cdef uint64_t i
        for i in range(self.s.mask + 1):
            self.s.keys[i] = 0
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
        return self.s.budget

    @budget.setter
    def budget(self, value):
        self.s.budget = value

    @property
    def stop_reason(self):
        return self.s.stop_reason

    @stop_reason.setter
    def stop_reason(self, value):
        self.s.stop_reason = value

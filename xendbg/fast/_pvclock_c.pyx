# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Compiled twin of ``_pvclock_py`` (see there for the documentation)."""

from libc.stdint cimport uint32_t, uint64_t, uintptr_t
from libc.stdlib cimport calloc, free

cdef extern from *:
    """
    #include <stdint.h>
    /* The 128-bit product of Xen's "mulq; shrd $32": bits 32..95 of delta * mul_frac. */
    static inline uint64_t xendbg_mul_frac(uint64_t delta, uint32_t mul_frac) {
        return (uint64_t)(((unsigned __int128)delta * mul_frac) >> 32);
    }
    """
    uint64_t xendbg_mul_frac(uint64_t delta, uint32_t mul_frac) nogil

cdef uint64_t NSEC_PER_SEC = 1000000000
cdef uint32_t MUL_FRAC_IDENTITY = 0x80000000
cdef long long INT_MAX = 2147483647
cdef uint64_t U64_MAX = 0xFFFFFFFFFFFFFFFF


cdef inline uint64_t _scale(uint64_t delta, uint32_t mul_frac, int shift) noexcept nogil:
    if shift < 0:
        if shift <= -64:
            return 0
        delta >>= -shift
    else:
        if shift >= 64:
            return 0
        delta <<= shift
    return xendbg_mul_frac(delta, mul_frac)


def scale_delta(uint64_t delta, uint32_t mul_frac, int shift):
    return _scale(delta, mul_frac, shift)


def set_time_scale(uint64_t ticks_per_sec):
    cdef uint64_t tps64 = ticks_per_sec
    cdef uint32_t tps32
    cdef int shift = 0
    if tps64 == 0:
        raise ValueError("a clock of 0 Hz has no time scale")
    while tps64 > 2 * NSEC_PER_SEC:
        tps64 >>= 1
        shift -= 1
    tps32 = <uint32_t>tps64
    while tps32 <= <uint32_t>NSEC_PER_SEC:
        tps32 <<= 1
        shift += 1
    return <uint32_t>((NSEC_PER_SEC << 32) // tps32), shift


cdef int _reciprocal(uint32_t mul_frac, int shift, uint32_t *rmul, long long *rshift) noexcept nogil:
    cdef uint32_t dividend = MUL_FRAC_IDENTITY
    cdef long long s = 1 - <long long>shift
    while dividend >= mul_frac:
        dividend >>= 1
        s += 1
    rmul[0] = <uint32_t>((<uint64_t>dividend << 32) // mul_frac)
    rshift[0] = s
    return 0


def scale_reciprocal(uint32_t mul_frac, int shift):
    cdef uint32_t rmul
    cdef long long rshift
    if mul_frac == 0:
        raise ValueError("a zero scale has no reciprocal")
    _reciprocal(mul_frac, shift, &rmul, &rshift)
    if rshift > INT_MAX:
        raise OverflowError(f"the reciprocal's shift {rshift} does not fit in an int")
    return rmul, <int>rshift


def pvclock_read(uint64_t system_time, uint64_t tsc_timestamp, uint32_t mul_frac, int shift,
                 uint64_t tsc):
    return system_time + _scale(tsc - tsc_timestamp, mul_frac, shift)


def tsc_for_ns(uint64_t ns, uint32_t mul_frac, int shift):
    cdef uint64_t top, lo, hi, mid, guess, step, below, above
    cdef uint32_t rmul
    cdef long long rshift
    if ns == 0:
        return 0
    if mul_frac == 0 or shift >= 64:
        return None
    top = U64_MAX >> shift if shift > 0 else U64_MAX
    if _scale(top, mul_frac, shift) < ns:
        return None
    with nogil:
        lo = 0
        hi = top
        _reciprocal(mul_frac, shift, &rmul, &rshift)     # shift > -64 here: rshift < 100
        guess = _scale(ns, rmul, <int>rshift)
        if guess > top:
            guess = top
        step = 1
        if _scale(guess, mul_frac, shift) >= ns:
            hi = guess
            while True:
                below = hi - step if hi > step else 0
                if _scale(below, mul_frac, shift) < ns:
                    lo = below
                    break
                hi = below
                step *= 2
        else:
            lo = guess
            while True:
                above = lo + step if top - lo > step else top
                if _scale(above, mul_frac, shift) >= ns:
                    hi = above
                    break
                lo = above
                step *= 2
        while hi - lo > 1:
            mid = lo + (hi - lo) // 2
            if _scale(mid, mul_frac, shift) >= ns:
                hi = mid
            else:
                lo = mid
    return hi


# -- the rdtsc/rdtscp hook ------------------------------------------------------------------------

import ctypes

from unicorn import UC_HOOK_INSN
from unicorn import x86_const as _U
from unicorn.unicorn_py3.unicorn import uclib

ctypedef int (*reg_write_fn)(void *uc, int regid, const void *value) noexcept nogil

cdef struct TscState:
    uint64_t per_insn
    uint64_t idle_tsc
    int ax
    int dx
    int cx
    reg_write_fn reg_write
    void *owner


cdef int _tsc_hook(void *uc, TscState *s, bint rdtscp) noexcept with gil:
    cdef object owner = <object>s.owner
    cdef uint64_t tsc, lo, hi, zero = 0
    try:
        tsc = <uint64_t>(owner._machine.counter.insns) * s.per_insn + s.idle_tsc
    except BaseException as exc:  # an exception must not unwind through unicorn's C frames
        owner.hook_error = exc
        tsc = 0
    lo = tsc & 0xFFFFFFFF
    hi = tsc >> 32
    s.reg_write(uc, s.ax, &lo)
    s.reg_write(uc, s.dx, &hi)
    if rdtscp:
        s.reg_write(uc, s.cx, &zero)
    return 1


cdef int _rdtsc_hook(void *uc, void *user_data) noexcept with gil:
    return _tsc_hook(uc, <TscState *>user_data, False)


cdef int _rdtscp_hook(void *uc, void *user_data) noexcept with gil:
    return _tsc_hook(uc, <TscState *>user_data, True)


cdef class TscHook:
    cdef TscState *s
    cdef object _uc
    cdef public object _machine
    cdef public object hook_error
    cdef list _handles

    def __cinit__(self):
        self.s = <TscState *>calloc(1, sizeof(TscState))
        if self.s == NULL:
            raise MemoryError()

    def __init__(self, uc, machine, bint is64):
        self._uc = uc
        self._machine = machine
        self.hook_error = None
        self._handles = []
        self.s.owner = <void *>self
        self.s.per_insn = 1
        self.s.reg_write = <reg_write_fn><uintptr_t>ctypes.cast(uclib.uc_reg_write,
                                                                 ctypes.c_void_p).value
        if is64:
            self.s.ax, self.s.dx, self.s.cx = _U.UC_X86_REG_RAX, _U.UC_X86_REG_RDX, _U.UC_X86_REG_RCX
        else:
            self.s.ax, self.s.dx, self.s.cx = _U.UC_X86_REG_EAX, _U.UC_X86_REG_EDX, _U.UC_X86_REG_ECX

    def __dealloc__(self):
        free(self.s)

    @property
    def per_insn(self):
        return self.s.per_insn

    @per_insn.setter
    def per_insn(self, uint64_t value):
        self.s.per_insn = value

    @property
    def idle_tsc(self):
        return self.s.idle_tsc

    @idle_tsc.setter
    def idle_tsc(self, uint64_t value):
        self.s.idle_tsc = value

    def tsc(self):
        return <uint64_t>(self._machine.counter.insns) * self.s.per_insn + self.s.idle_tsc

    def install(self):
        if self._handles:
            return
        for insn, fn in ((_U.UC_X86_INS_RDTSC, <uintptr_t>&_rdtsc_hook),
                         (_U.UC_X86_INS_RDTSCP, <uintptr_t>&_rdtscp_hook)):
            handle = ctypes.c_size_t()
            err = uclib.uc_hook_add(self._uc._uch, ctypes.byref(handle), UC_HOOK_INSN,
                                    ctypes.c_void_p(fn), ctypes.c_void_p(<uintptr_t>self.s),
                                    ctypes.c_uint64(1), ctypes.c_uint64(0), ctypes.c_int(insn))
            if err:
                raise RuntimeError(f"uc_hook_add(rdtsc) failed: {err}")
            self._handles.append(handle)

    def remove(self):
        for handle in self._handles:
            uclib.uc_hook_del(self._uc._uch, handle)
        self._handles = []

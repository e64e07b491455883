"""pvclock scaling: the arithmetic Xen and its guests use to turn TSC ticks into nanoseconds.

A *time scale* is a pair ``(mul_frac, shift)``: a 32-bit binary fraction (``mul_frac / 2**32``) and
a signed power of two. Scaling a 64-bit delta first shifts it (left for ``shift > 0``, right for
``shift < 0``; the left shift drops the bits that leave the 64-bit register, as the CPU does),
then multiplies by the fraction with a 128-bit intermediate product and keeps bits 32..95::

    scaled = ((delta << shift) * mul_frac) >> 32          (all modulo 2**64)

These are Xen's ``scale_delta``, ``set_time_scale`` and ``scale_reciprocal``
(``xen/arch/x86/time.c``), and the guest side of ``vcpu_time_info`` (``pvclock_read``, as Linux's
``pvclock_clocksource_read`` computes it). Everything is unsigned 64-bit modular arithmetic, so a
TSC that wrapped, or a TSC read before ``tsc_timestamp``, gives what the C code gives: a huge
unsigned delta, not a negative one.

``tsc_for_ns`` is the way back that a hypervisor needs for timers: the smallest TSC delta whose
scaled value reaches a number of nanoseconds, exactly (the reciprocal scale alone is only an
estimate, off by a few ticks).

This is the pure-Python twin; ``_pvclock_c`` is the compiled one (same names, same results, bit for
bit: tests/test_fast_pvclock.py checks it with hypothesis). Arguments are C types: 64-bit
unsigned values (delta, TSC, times), a 32-bit unsigned ``mul_frac`` and a C ``int`` shift (an
``int8_t`` in ``vcpu_time_info``); a value outside its type raises OverflowError in both twins. A
shift of 64 or more either way leaves nothing of the delta (0), where C would be undefined.
"""

from __future__ import annotations

MASK32 = (1 << 32) - 1
MASK64 = (1 << 64) - 1
NSEC_PER_SEC = 1_000_000_000
MUL_FRAC_IDENTITY = 0x80000000     # Xen's _TS_MUL_FRAC_IDENTITY: 0.5, i.e. 1.0 at shift +1


INT_MIN, INT_MAX = -(1 << 31), (1 << 31) - 1


def _u64(value: int) -> int:
    if not 0 <= value <= MASK64:
        raise OverflowError(f"{value} does not fit in a uint64_t")
    return value


def _check_scale(mul_frac: int, shift: int) -> None:
    if not 0 <= mul_frac <= MASK32:
        raise OverflowError(f"mul_frac {mul_frac} does not fit in a uint32_t")
    if not INT_MIN <= shift <= INT_MAX:
        raise OverflowError(f"shift {shift} does not fit in an int")


def scale_delta(delta: int, mul_frac: int, shift: int) -> int:
    """Xen's ``scale_delta``: ``((delta << shift) * mul_frac) >> 32``, 64-bit unsigned."""
    _check_scale(mul_frac, shift)
    _u64(delta)
    if shift < 0:
        delta = delta >> -shift if shift > -64 else 0
    else:
        delta = (delta << shift) & MASK64 if shift < 64 else 0
    return ((delta * mul_frac) >> 32) & MASK64


def set_time_scale(ticks_per_sec: int) -> tuple[int, int]:
    """Xen's ``set_time_scale``: the ``(mul_frac, shift)`` that turns ticks of a clock running at
    ``ticks_per_sec`` Hz into nanoseconds.

    The rate is first halved (shift - 1) until it is at most 2 GHz, then doubled (shift + 1) until
    it is above 1 GHz, so that ``mul_frac = 10**9 * 2**32 / rate`` is a fraction in (0.5, 1).
    """
    if _u64(ticks_per_sec) == 0:
        raise ValueError("a clock of 0 Hz has no time scale")
    tps64 = ticks_per_sec
    shift = 0
    while tps64 > 2 * NSEC_PER_SEC:
        tps64 >>= 1
        shift -= 1
    tps32 = tps64 & MASK32
    while tps32 <= NSEC_PER_SEC:
        tps32 = (tps32 << 1) & MASK32
        shift += 1
    return (NSEC_PER_SEC << 32) // tps32, shift        # div_frac(10**9, tps32)


def scale_reciprocal(mul_frac: int, shift: int) -> tuple[int, int]:
    """Xen's ``scale_reciprocal``: the scale that undoes ``(mul_frac, shift)`` (ns → ticks), up to
    rounding. ``mul_frac`` must not be 0 (ValueError)."""
    _check_scale(mul_frac, shift)
    if mul_frac == 0:
        raise ValueError("a zero scale has no reciprocal")
    dividend = MUL_FRAC_IDENTITY
    rshift = 1 - shift
    while dividend >= mul_frac:
        dividend >>= 1
        rshift += 1
    if rshift > INT_MAX:
        raise OverflowError(f"the reciprocal's shift {rshift} does not fit in an int")
    return (dividend << 32) // mul_frac, rshift


def pvclock_read(system_time: int, tsc_timestamp: int, mul_frac: int, shift: int,
                 tsc: int) -> int:
    """What a guest computes from its ``vcpu_time_info`` at TSC value ``tsc``:
    ``system_time + scale_delta(tsc - tsc_timestamp)``, all modulo 2**64."""
    delta = (_u64(tsc) - _u64(tsc_timestamp)) & MASK64
    return (_u64(system_time) + scale_delta(delta, mul_frac, shift)) & MASK64


def tsc_for_ns(ns: int, mul_frac: int, shift: int) -> int | None:
    """The smallest delta ``d`` with ``scale_delta(d, mul_frac, shift) >= ns``.

    ``scale_delta`` only increases with ``d`` while ``d << shift`` fits in 64 bits, so the answer
    is looked for in that range; None when ``ns`` cannot be reached there (or ``mul_frac`` is 0).
    ``ns == 0`` needs no tick: 0.
    """
    _check_scale(mul_frac, shift)
    if _u64(ns) == 0:
        return 0
    if mul_frac == 0 or shift >= 64:
        return None
    top = MASK64 >> shift if shift > 0 else MASK64
    if scale_delta(top, mul_frac, shift) < ns:
        return None
    # Bisect between lo (scale < ns: 0 always is, since ns > 0) and hi (scale >= ns), after
    # narrowing the bracket around the reciprocal's estimate by doubling steps: a few dozen
    # scale_delta calls, exact whatever the rounding of either scale.
    lo, hi = 0, top
    rmul, rshift = scale_reciprocal(mul_frac, shift)   # here shift > -64: rshift fits an int
    guess = min(scale_delta(ns, rmul, rshift), top)
    step = 1
    if scale_delta(guess, mul_frac, shift) >= ns:
        hi = guess
        while True:
            below = hi - step if hi > step else 0
            if scale_delta(below, mul_frac, shift) < ns:
                lo = below
                break
            hi = below
            step *= 2
    else:
        lo = guess
        while True:
            above = min(lo + step, top)
            if scale_delta(above, mul_frac, shift) >= ns:
                hi = above
                break
            lo = above
            step *= 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if scale_delta(mid, mul_frac, shift) >= ns:
            hi = mid
        else:
            lo = mid
    return hi


class TscHook:
    """``rdtsc``/``rdtscp`` answered with the virtual TSC, without leaving the CPU for long.

    ``tsc = machine.counter.insns * per_insn + idle_tsc`` is written to EDX:EAX (ECX = 0, the
    TSC_AUX of vCPU 0, for ``rdtscp``) and the instruction's own effect is skipped. The counter is
    looked up on ``machine`` at every read, so a machine whose block counter is replaced keeps
    a live clock. The owner (the machine's clock) keeps ``per_insn`` and ``idle_tsc`` up to date.

    Unicorn's Python binding refuses the RDTSC instruction constants, so the hooks are registered
    through the C API (``uc_hook_add``); this twin's callbacks are ctypes functions calling into
    Python, the compiled one's are C (about 25 times cheaper per read).
    """

    def __init__(self, uc, machine, is64: bool) -> None:
        import ctypes

        from unicorn import x86_const as U

        self._ctypes = ctypes
        self._uc = uc
        self._machine = machine
        self.per_insn = 1
        self.idle_tsc = 0
        self.hook_error: BaseException | None = None
        self._regs = ((U.UC_X86_REG_RAX, U.UC_X86_REG_RDX, U.UC_X86_REG_RCX) if is64 else
                      (U.UC_X86_REG_EAX, U.UC_X86_REG_EDX, U.UC_X86_REG_ECX))
        self._insns = (U.UC_X86_INS_RDTSC, U.UC_X86_INS_RDTSCP)
        self._callbacks: list = []
        self._handles: list = []

    def tsc(self) -> int:
        return (self._machine.counter.insns * self.per_insn + self.idle_tsc) & MASK64

    def _make(self, is_rdtscp: bool):
        ctypes = self._ctypes
        ax, dx, cx = self._regs

        @ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p)
        def hook(_uch, _user):
            try:
                tsc = self.tsc()
                self._uc.reg_write(ax, tsc & MASK32)
                self._uc.reg_write(dx, tsc >> 32)
                if is_rdtscp:
                    self._uc.reg_write(cx, 0)
            except BaseException as exc:      # noqa: BLE001 - never unwind into C
                self.hook_error = exc
            return 1
        return hook

    def install(self) -> None:
        if self._handles:
            return
        from unicorn import UC_HOOK_INSN
        from unicorn.unicorn_py3.unicorn import uclib
        ctypes = self._ctypes
        for insn, is_rdtscp in zip(self._insns, (False, True), strict=True):
            cb = self._make(is_rdtscp)
            handle = ctypes.c_size_t()
            err = uclib.uc_hook_add(self._uc._uch, ctypes.byref(handle), UC_HOOK_INSN,
                                    ctypes.cast(cb, ctypes.c_void_p), None, ctypes.c_uint64(1),
                                    ctypes.c_uint64(0), ctypes.c_int(insn))
            if err:
                raise RuntimeError(f"uc_hook_add(rdtsc) failed: {err}")
            self._callbacks.append(cb)
            self._handles.append(handle)

    def remove(self) -> None:
        from unicorn.unicorn_py3.unicorn import uclib
        for handle in self._handles:
            uclib.uc_hook_del(self._uc._uch, handle)
        self._handles.clear()
        self._callbacks.clear()

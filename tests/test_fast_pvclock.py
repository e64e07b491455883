"""pvclock scaling: the compiled module and its Python twin compute Xen's numbers, bit for bit."""

from __future__ import annotations

import importlib
import os
import shutil

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from xendbg.fast import _pvclock_py
from xendbg.fast import pvclock as selector

U64 = (1 << 64) - 1
U32 = (1 << 32) - 1

try:
    from xendbg.fast import _pvclock_c
except ImportError:          # not built: the compiled cases are skipped, the test below says why
    _pvclock_c = None

IMPLS = [pytest.param(_pvclock_py, id="python"),
         pytest.param(_pvclock_c, id="cython",
                      marks=pytest.mark.skipif(_pvclock_c is None, reason="not built"))]


@pytest.fixture(params=IMPLS)
def impl(request):
    return request.param


def test_compiled_module_loaded_where_a_compiler_exists():
    if os.environ.get("XENDBG_PURE_PYTHON") or shutil.which("cc") is None:
        pytest.skip("pure-Python run or no compiler")
    assert selector.IMPLEMENTATION == "cython"
    importlib.import_module("xendbg.fast._pvclock_c")


# -- known values (worked out by hand from Xen's set_time_scale / scale_delta) ----------------------

@pytest.mark.parametrize("hz, scale", [
    (2_000_000_000, (1 << 31, 0)),           # 2 GHz: exactly half a nanosecond per tick
    (1_000_000_000, (1 << 31, 1)),           # 1 GHz is "<= 10**9": doubled once
    (3_000_000_000, (2863311530, -1)),       # 3 GHz halved to 1.5 GHz: 2**32 * 2/3
    (4_000_000_000, (1 << 31, -1)),
    (1_000_000, (4194304000, 10)),           # 1 MHz doubled 10 times to 1.024 GHz
    (1, (4294967296000000000 // (1 << 30), 30)),
])
def test_set_time_scale_known_values(impl, hz, scale):
    assert impl.set_time_scale(hz) == scale


def test_set_time_scale_gives_nanoseconds(impl):
    for hz in (1_000_000, 999_999_937, 1_000_000_000, 1_234_567_891, 2_000_000_000,
               2_900_000_000, 3_000_000_000, 10_000_000_000, U64):
        mul, shift = impl.set_time_scale(hz)
        assert 1 << 31 <= mul <= U32
        ns = impl.scale_delta(min(hz, U64 >> max(shift, 0)), mul, shift)
        seconds = min(hz, U64 >> max(shift, 0)) / hz
        assert abs(ns - seconds * 1e9) <= 1e-6 * seconds * 1e9 + 2


def test_scale_delta_shifts_and_wraps(impl):
    assert impl.scale_delta(2_000_000_000, 1 << 31, 0) == 1_000_000_000
    assert impl.scale_delta(7, 1 << 31, 0) == 3                        # rounds down
    assert impl.scale_delta(1 << 40, 1 << 31, -8) == 1 << 31           # right shift first
    assert impl.scale_delta(1 << 63, 1 << 31, 1) == 0                  # the shifted-out bit is lost
    assert impl.scale_delta(U64, U32, 0) == (U64 * U32) >> 32          # needs 96 bits
    assert impl.scale_delta(U64, U32, -1) == ((U64 >> 1) * U32) >> 32
    assert impl.scale_delta(123, U32, 64) == 0 == impl.scale_delta(123, U32, -64)
    assert impl.scale_delta(123, 1 << 31, -127) == 0


def test_pvclock_read_is_modular(impl):
    assert impl.pvclock_read(1000, 2000, 1 << 31, 0, 4000) == 2000
    # A TSC read before the timestamp is a huge unsigned delta, not a negative one (as in C).
    assert impl.pvclock_read(0, 10, 1 << 31, 0, 8) == ((U64 - 1) * (1 << 31)) >> 32
    assert impl.pvclock_read(U64, 0, 1 << 31, 0, 4) == 1            # system_time wraps too


def test_scale_reciprocal(impl):
    mul, shift = impl.set_time_scale(2_000_000_000)
    assert impl.scale_reciprocal(mul, shift) == (1 << 31, 2)         # ns → ticks: times 2
    assert impl.scale_delta(1000, *impl.scale_reciprocal(mul, shift)) == 2000
    for hz in (1_000_000, 1_234_567_891, 3_000_000_000):
        mul, shift = impl.set_time_scale(hz)
        rmul, rshift = impl.scale_reciprocal(mul, shift)
        ticks = impl.scale_delta(10**9, rmul, rshift)
        assert abs(ticks - hz) <= hz * 1e-8 + 2


def test_tsc_for_ns_is_the_least_delta(impl):
    for hz in (1_000_000, 2_000_000_000, 3_000_000_000, 1_234_567_891):
        mul, shift = impl.set_time_scale(hz)
        for ns in (1, 2, 3, 999, 10**6, 10**9, 123456789012345):
            d = impl.tsc_for_ns(ns, mul, shift)
            assert impl.scale_delta(d, mul, shift) >= ns
            assert d == 0 or impl.scale_delta(d - 1, mul, shift) < ns
    assert impl.tsc_for_ns(0, 1 << 31, 0) == 0
    assert impl.tsc_for_ns(5, 0, 0) is None                            # a stopped clock
    assert impl.tsc_for_ns(U64, 1 << 31, 0) is None                    # beyond 2**64 ticks
    assert impl.tsc_for_ns(1, 1 << 31, -64) is None


@pytest.mark.parametrize("call", [
    lambda m: m.scale_delta(-1, 1, 0),
    lambda m: m.scale_delta(1 << 64, 1, 0),
    lambda m: m.scale_delta(1, 1 << 32, 0),
    lambda m: m.scale_delta(1, -1, 0),
    lambda m: m.scale_delta(1, 1, 1 << 31),
    lambda m: m.pvclock_read(-1, 0, 1, 0, 0),
    lambda m: m.set_time_scale(-5),
    lambda m: m.tsc_for_ns(-1, 1, 0),
])
def test_out_of_range_arguments_raise_overflow(impl, call):
    with pytest.raises(OverflowError):
        call(impl)


def test_zero_rates_raise_value_error(impl):
    with pytest.raises(ValueError):
        impl.set_time_scale(0)
    with pytest.raises(ValueError):
        impl.scale_reciprocal(0, 0)


# -- hypothesis: the two twins agree everywhere ---------------------------------------------------

pytestmark_c = pytest.mark.skipif(_pvclock_c is None, reason="the compiled module is not built")
u64 = st.integers(0, U64)
u32 = st.integers(0, U32)
shifts = st.integers(-70, 70) | st.integers(-(1 << 31), (1 << 31) - 1)


@pytestmark_c
@settings(max_examples=400, deadline=None)
@given(delta=u64, mul=u32, shift=shifts)
@example(delta=U64, mul=U32, shift=0)
@example(delta=(1 << 63) + 1, mul=U32, shift=1)
@example(delta=U64, mul=1, shift=-63)
def test_scale_delta_agrees(delta, mul, shift):
    assert _pvclock_c.scale_delta(delta, mul, shift) == _pvclock_py.scale_delta(delta, mul, shift)


@pytestmark_c
@settings(max_examples=400, deadline=None)
@given(hz=st.integers(1, U64))
@example(hz=1)
@example(hz=2_000_000_001)
@example(hz=U64)
def test_set_time_scale_agrees(hz):
    assert _pvclock_c.set_time_scale(hz) == _pvclock_py.set_time_scale(hz)


@pytestmark_c
@settings(max_examples=400, deadline=None)
@given(mul=st.integers(1, U32), shift=st.integers(-(1 << 31) + 2, (1 << 31) - 1))
@example(mul=1, shift=-(1 << 31) + 2)
def test_scale_reciprocal_agrees(mul, shift):
    def call(m):
        try:
            return m.scale_reciprocal(mul, shift)
        except OverflowError:
            return "overflow"
    assert call(_pvclock_c) == call(_pvclock_py)


@pytestmark_c
@settings(max_examples=400, deadline=None)
@given(system_time=u64, stamp=u64, mul=u32, shift=st.integers(-70, 70), tsc=u64)
@example(system_time=U64, stamp=U64, mul=U32, shift=-1, tsc=0)        # both wrap
def test_pvclock_read_agrees(system_time, stamp, mul, shift, tsc):
    assert _pvclock_c.pvclock_read(system_time, stamp, mul, shift, tsc) == \
        _pvclock_py.pvclock_read(system_time, stamp, mul, shift, tsc)


@pytestmark_c
@settings(max_examples=300, deadline=None)
@given(ns=u64, mul=u32, shift=st.integers(-70, 70))
@example(ns=1, mul=1, shift=-63)
@example(ns=U64, mul=U32, shift=0)
def test_tsc_for_ns_agrees(ns, mul, shift):
    d = _pvclock_c.tsc_for_ns(ns, mul, shift)
    assert d == _pvclock_py.tsc_for_ns(ns, mul, shift)
    if d is not None:
        assert _pvclock_py.scale_delta(d, mul, shift) >= ns
        assert d == 0 or _pvclock_py.scale_delta(d - 1, mul, shift) < ns


@pytestmark_c
@settings(max_examples=200, deadline=None)
@given(hz=st.integers(1_000_000, 10**11), ns=st.integers(0, 1 << 50))
def test_round_trip_through_the_real_scales(hz, ns):
    """ns → the least TSC delta that reaches it → back: exactly ns or just above, for a real clock."""
    mul, shift = _pvclock_py.set_time_scale(hz)
    d = _pvclock_c.tsc_for_ns(ns, mul, shift)
    back = _pvclock_c.scale_delta(d, mul, shift)
    assert back >= ns
    assert d == 0 or _pvclock_c.scale_delta(d - 1, mul, shift) < ns

"""L1 validation: the compiled loop and its Python twin change the frame table identically."""

from __future__ import annotations

import importlib
import os
import shutil

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from xendbg.fast import _validate_py as V
from xendbg.fast import validate as selector

try:
    from xendbg.fast import _validate_c
except ImportError:          # not built: the compiled cases are skipped, the test below says why
    _validate_c = None

IMPLS = [pytest.param(V, id="python"),
         pytest.param(_validate_c, id="cython",
                      marks=pytest.mark.skipif(_validate_c is None, reason="not built"))]
needs_c = pytest.mark.skipif(_validate_c is None, reason="compiled validation not built")

P, RW, US = 1, 2, 4
DOMID = 1
DOMID_INVALID = 0x7FF4
DISALLOW64 = 0x98                                 # PageTypes.l1_disallow of a 64-bit guest
DISALLOW32 = 0x7FF0000000000098                   # … and of a 32-bit PAE guest
INT32_MAX = (1 << 31) - 1


@pytest.fixture(params=IMPLS)
def impl(request):
    return request.param


def test_compiled_module_loaded_where_a_compiler_exists():
    if os.environ.get("XENDBG_PURE_PYTHON") or shutil.which("cc") is None:
        pytest.skip("pure-Python run or no compiler")
    assert selector.IMPLEMENTATION == "cython"
    importlib.import_module("xendbg.fast._validate_c")


def test_the_mmu_uses_the_selected_implementation():
    from xendbg.machine.mmu import _validate as mmu_validate
    assert mmu_validate.validate_l1 is selector.validate_l1
    assert mmu_validate.devalidate_l1 is selector.devalidate_l1


class Frames:
    """A frame table of ``n`` frames, all the MMU's arrays with the MMU's dtypes."""

    def __init__(self, n: int) -> None:
        self.owner = np.full(n, DOMID_INVALID, np.uint16)
        self.count = np.zeros(n, np.int32)
        self.type_ = np.zeros(n, np.uint8)
        self.type_count = np.zeros(n, np.int32)
        self.flags = np.zeros(n, np.uint8)
        self.changed = np.full((2, 512), -1, np.int64)
        self.zeroed = np.full(512, -1, np.int64)

    def arrays(self):
        return self.owner, self.count, self.type_, self.type_count, self.flags

    def copy(self) -> Frames:
        other = Frames(0)
        for name in ("owner", "count", "type_", "type_count", "flags", "changed", "zeroed"):
            setattr(other, name, getattr(self, name).copy())
        return other

    def validate(self, impl, entries, domid=DOMID, disallow=DISALLOW64, adjust=US):
        return impl.validate_l1(entries, domid, disallow, adjust, *self.arrays(), self.changed)

    def devalidate(self, impl, entries):
        return impl.devalidate_l1(entries, self.count, self.type_count, self.zeroed)


def _ours(n: int) -> Frames:
    f = Frames(n)
    f.owner[:] = DOMID
    f.count[:] = 1                  # allocated: the domain's own reference
    return f


# -- known answers ------------------------------------------------------------------------------

def test_validate_takes_references_and_types_writable_frames(impl):
    f = _ours(16)
    f.type_[7], f.type_count[7] = V.T_L1, 0             # an L1 no longer in use: may become writable
    entries = np.array([5 << 12 | P | RW, 0, 6 << 12 | P, 7 << 12 | P | RW, 5 << 12 | P | RW],
                       "<u8")
    assert f.validate(impl, entries) == (V.OK, 5, 2)
    assert f.count[5:8].tolist() == [3, 2, 2]
    assert f.type_count[5:8].tolist() == [2, 0, 1]
    assert f.type_[5:8].tolist() == [V.T_WRITABLE, V.T_NONE, V.T_WRITABLE]
    assert f.flags[5:8].tolist() == [V.F_VALIDATED, 0, V.F_VALIDATED]
    assert f.changed[:, :2].tolist() == [[5, 7], [V.T_NONE, V.T_L1]]
    assert entries.tolist() == [5 << 12 | P | RW | US, 0, 6 << 12 | P | US,
                                7 << 12 | P | RW | US, 5 << 12 | P | RW | US]
    # and devalidation drops exactly those references: nothing reaches 0 (each had one)
    assert f.devalidate(impl, entries) == 0
    assert f.count[5:8].tolist() == [1, 1, 1]
    assert f.type_count[5:8].tolist() == [0, 0, 0]


@pytest.mark.parametrize("entry, reason", [
    (3 << 12 | P | 0x80, V.BAD_FLAGS),                       # PAT/PSE bit in an L1 entry
    (99 << 12 | P, V.NO_SUCH_FRAME),                         # beyond memory: MMIO
    (V.INVALID_ENTRY_MFN << 12 | P, V.INVALID_MFN),
    (2 << 12 | P, V.NOT_OWNER),                              # someone else's frame
    (4 << 12 | P, V.NOT_OWNER),                              # ours but not allocated (count 0)
    (9 << 12 | P | RW, V.WRITABLE_TYPE),                     # a page table, mapped writable
])
def test_first_bad_entry_stops_validation(impl, entry, reason):
    f = _ours(16)
    f.owner[2] = 0
    f.count[4] = 0
    f.type_[9], f.type_count[9] = V.T_L2, 1
    entries = np.array([5 << 12 | P | RW, 0, entry, 6 << 12 | P | RW], "<u8")
    assert f.validate(impl, entries) == (reason, 2, 1)
    assert f.count[5] == 2 and f.count[6] == 1              # taken before the bad entry only
    assert entries[0] & US and not entries[3] & US
    assert f.validate(impl, np.array([9 << 12 | P], "<u8")) == (V.OK, 1, 0)   # read-only is fine


def test_devalidate_reports_frames_left_without_references(impl):
    f = _ours(16)
    f.count[3] = 2
    f.type_count[3] = 2
    f.count[8] = 1
    entries = np.array([3 << 12 | P | RW, 8 << 12 | P, 3 << 12 | P | RW, 0, 1 << 50 | P], "<u8")
    assert f.devalidate(impl, entries) == 2
    assert f.zeroed[:2].tolist() == [3, 8]
    assert f.count[3] == 0 and f.type_count[3] == 0 and f.count[8] == 0


def test_empty_and_absent_tables(impl):
    f = _ours(4)
    assert f.validate(impl, np.zeros(0, "<u8")) == (V.OK, 0, 0)
    assert f.validate(impl, np.zeros(512, "<u8")) == (V.OK, 512, 0)
    assert f.devalidate(impl, np.zeros(512, "<u8")) == 0


@needs_c
def test_compiled_twin_refuses_short_arrays():
    f = _ours(8)
    f.count = f.count[:4]
    with pytest.raises(ValueError):
        f.validate(_validate_c, np.array([1 << 12 | P], "<u8"))
    g = _ours(8)
    g.zeroed = g.zeroed[:1]
    g.count[1:3] = 1
    with pytest.raises(ValueError):
        g.devalidate(_validate_c, np.array([1 << 12 | P, 2 << 12 | P], "<u8"))


# -- hypothesis: random frame tables and random L1 tables --------------------------------------

NR = 12
counts = st.sampled_from([0, 1, 1, 1, 2, 3, -1, INT32_MAX, -(1 << 31)])
type_counts = st.sampled_from([0, 0, 0, 1, 2, -1, INT32_MAX])
types = st.sampled_from([V.T_NONE, V.T_NONE, V.T_WRITABLE, V.T_WRITABLE, V.T_L1, V.T_L2,
                         V.T_L2 | V.T_PAE_XEN_L2, V.T_L3, V.T_L4, V.T_SEG_DESC])
mfns = st.one_of(st.integers(0, NR - 1), st.integers(0, NR - 1), st.integers(0, NR - 1),
                 st.integers(NR, NR + 3), st.just(V.INVALID_ENTRY_MFN),
                 st.integers(0, V.INVALID_ENTRY_MFN))
allowed_bits = st.lists(st.sampled_from([RW, RW, US, 0x20, 0x40, 0x100, 0x200, 1 << 52,
                                         1 << 63]), max_size=4)
any_bits = st.lists(st.sampled_from([P, RW, US, 0x8, 0x10, 0x80, 0x100, 1 << 52, 1 << 60,
                                     1 << 63]), max_size=5)
mapping = st.builds(lambda m, b: m << 12 | P | sum(set(b)), st.integers(0, NR - 3), allowed_bits)
entries_st = st.lists(st.one_of(mapping, mapping, mapping, mapping, mapping, mapping, st.just(0),
                                st.builds(lambda m, b: m << 12 | sum(set(b)), mfns, any_bits),
                                st.integers(0, (1 << 64) - 1)),
                      min_size=0, max_size=40)


@st.composite
def frame_tables(draw):
    f = Frames(NR)
    clean = draw(st.booleans())        # half the time a table in which most mappings succeed
    for mfn in range(NR):
        if clean and mfn < NR - 2:
            f.owner[mfn] = DOMID
            f.count[mfn] = draw(st.integers(1, 3))
            f.type_[mfn] = draw(st.sampled_from([V.T_NONE, V.T_WRITABLE, V.T_L1, V.T_SEG_DESC]))
            f.type_count[mfn] = 0 if f.type_[mfn] != V.T_WRITABLE else draw(st.integers(0, 2))
        else:
            f.owner[mfn] = draw(st.sampled_from([DOMID] * 6 + [0, DOMID_INVALID]))
            f.count[mfn] = draw(counts)
            f.type_[mfn] = draw(types)
            f.type_count[mfn] = draw(type_counts)
        f.flags[mfn] = draw(st.integers(0, 255))
    return f


def _same(a: Frames, b: Frames) -> None:
    for name in ("owner", "count", "type_", "type_count", "flags"):
        assert np.array_equal(getattr(a, name), getattr(b, name)), name


@needs_c
@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(frames=frame_tables(), values=entries_st,
       domid=st.sampled_from([DOMID, DOMID, 0, 0x7FF4, 70000, -1]),
       disallow=st.sampled_from([DISALLOW64, DISALLOW32, 0]), adjust=st.sampled_from([US, 0]))
@example(frames=_ours(NR), values=[3 << 12 | P | RW] * 3 + [(NR + 1) << 12 | P], domid=DOMID,
         disallow=DISALLOW64, adjust=US)
def test_validate_agreement(frames, values, domid, disallow, adjust):
    py, c = frames, frames.copy()
    e_py = np.array(values, "<u8")
    e_c = e_py.copy()
    r_py = py.validate(V, e_py, domid, disallow, adjust)
    r_c = c.validate(_validate_c, e_c, domid, disallow, adjust)
    assert r_c == r_py
    assert all(type(x) is int for x in r_c)
    assert np.array_equal(e_c, e_py)
    _same(py, c)
    nch = r_py[2]
    assert np.array_equal(c.changed[:, :nch], py.changed[:, :nch])


@needs_c
@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(frames=frame_tables(), values=entries_st)
def test_devalidate_agreement(frames, values):
    py, c = frames, frames.copy()
    e = np.array(values, "<u8")
    n_py = py.devalidate(V, e)
    n_c = c.devalidate(_validate_c, e.copy())
    assert n_c == n_py and type(n_c) is int
    _same(py, c)
    assert np.array_equal(c.zeroed[:n_c], py.zeroed[:n_py])


@settings(max_examples=200, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(frames=frame_tables(), values=entries_st, c_first=st.booleans())
def test_validate_then_devalidate_round_trip(impl, frames, values, c_first):
    """A table that validates, devalidated by either twin, leaves the counts as they were."""
    other = _validate_c if (_validate_c is not None and c_first) else V
    before = frames.copy()
    e = np.array(values, "<u8")
    reason, index, _ = frames.validate(impl, e)
    frames.devalidate(other, e[:index])
    assert np.array_equal(frames.count, before.count)
    assert np.array_equal(frames.type_count, before.type_count)
    assert reason == V.OK or index < len(values)


@needs_c
@pytest.mark.parametrize("name", ["hello-pv64", "hello-pv32"])
def test_agrees_on_a_built_guests_tables(lab_machine, name):
    """Every L1 of a booted guest: devalidate and revalidate it with both twins."""
    m = lab_machine(name)
    pt = m.mmu.pt
    l1s = np.flatnonzero((pt.type & 0xF) == V.T_L1)
    assert len(l1s)
    results = []
    for impl in (V, _validate_c):
        f = Frames(0)
        f.owner, f.count, f.type_ = pt.owner.copy(), pt.count.copy(), pt.type.copy()
        f.type_count, f.flags = pt.type_count.copy(), pt.flags.copy()
        out = []
        for mfn in l1s.tolist():
            table = pt.table(mfn).copy()
            out.append(f.devalidate(impl, table))
            out.append(f.validate(impl, table, pt.domid, pt.l1_disallow, pt.user_bit))
            assert out[-1][0] == V.OK
        results.append((out, f))
    assert results[0][0] == results[1][0]
    _same(results[0][1], results[1][1])
    assert np.array_equal(results[1][1].count, pt.count)       # back where the MMU left them

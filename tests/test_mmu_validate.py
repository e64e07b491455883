"""The L1 validation loop (``fast/_validate_py``) on small fake frame tables, without Unicorn.

Written against the documented contract so that the compiled twin, when it exists, can be run
through the same tests (``impl`` fixture) and cross-checked against the twin with hypothesis.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xendbg.fast import _validate_py as V

D = 1                      # the domain
N = 64                     # machine frames of the fake table
RW, P, US = 2, 1, 4


def _impls():
    impls = [pytest.param(V, id="python")]
    try:
        from xendbg.fast import _validate_c  # type: ignore[attr-defined]
        impls.append(pytest.param(_validate_c, id="cython"))
    except ImportError:
        impls.append(pytest.param(None, id="cython", marks=pytest.mark.skip("not built yet")))
    return impls


@pytest.fixture(params=_impls())
def impl(request):
    return request.param


def table(n: int = N):
    owner = np.full(n, 0x7FF4, np.uint16)
    owner[8:48] = D
    owner[48:56] = 0                       # another domain
    count = np.zeros(n, np.int32)
    count[owner == D] = 1                  # allocated
    count[48:56] = 1
    return {"owner": owner, "count": count, "type_": np.zeros(n, np.uint8),
            "type_count": np.zeros(n, np.int32), "flags": np.zeros(n, np.uint8)}


def run(impl, ft, entries, disallow=0x180, adjust=0):
    arr = np.array(entries, dtype="<u8")
    changed = np.zeros((2, len(arr)), np.int64)
    out = impl.validate_l1(arr, D, disallow, adjust, ft["owner"], ft["count"], ft["type_"],
                           ft["type_count"], ft["flags"], changed)
    return out, arr, changed


def e(mfn: int, flags: int = P) -> int:
    return mfn << 12 | flags


def test_all_good_takes_every_reference(impl):
    ft = table()
    (reason, index, nch), arr, changed = run(impl, ft, [e(10), 0, e(11, P | RW), e(11, P | RW)],
                                             adjust=US)
    assert (reason, index, nch) == (V.OK, 4, 1)
    assert ft["count"][10] == 2 and ft["count"][11] == 3
    assert ft["type_count"][11] == 2 and ft["type_"][11] == V.T_WRITABLE
    assert ft["flags"][11] & V.F_VALIDATED
    assert list(changed[:, 0]) == [11, V.T_NONE]
    assert [int(x) & US for x in arr] == [US, 0, US, US]          # not-present entries untouched


@pytest.mark.parametrize("bad, reason", [
    (e(12, P | 0x80), V.BAD_FLAGS),                  # PAT/PSE bit
    (e(N + 5), V.NO_SUCH_FRAME),
    (e(V.INVALID_ENTRY_MFN), V.INVALID_MFN),
    (e(50), V.NOT_OWNER),                            # another domain's frame
    (e(60), V.NOT_OWNER),                            # a free frame
])
def test_first_bad_entry_stops_and_earlier_refs_stay(impl, bad, reason):
    ft = table()
    (got, index, _), _arr, _ = run(impl, ft, [e(10, P | RW), 0, bad, e(13)])
    assert (got, index) == (reason, 2)
    assert ft["count"][10] == 2 and ft["type_count"][10] == 1      # entry 0 holds its refs
    assert ft["count"][13] == 1                                     # entry 3 took none


def test_writable_mapping_of_a_typed_frame_is_refused(impl):
    ft = table()
    ft["type_"][20], ft["type_count"][20] = V.T_L1, 1
    (reason, index, nch), _, _ = run(impl, ft, [e(20), e(20, P | RW)])
    assert (reason, index, nch) == (V.WRITABLE_TYPE, 1, 0)
    assert ft["count"][20] == 2                                     # the read-only one holds
    assert ft["type_"][20] == V.T_L1 and ft["type_count"][20] == 1


def test_unused_table_frame_changes_type_and_the_change_is_reported(impl):
    ft = table()
    ft["type_"][21] = V.T_L2                                        # type count 0: may change
    (reason, _, nch), _, changed = run(impl, ft, [e(21, P | RW)])
    assert reason == V.OK and nch == 1 and list(changed[:, 0]) == [21, V.T_L2]
    assert ft["type_"][21] == V.T_WRITABLE


def test_devalidate_is_the_inverse_and_reports_zeroed(impl):
    ft = table()
    before = {k: v.copy() for k, v in ft.items()}
    entries = [e(10), e(11, P | RW), e(11, P | RW), 0]
    (reason, _, _), arr, _ = run(impl, ft, entries)
    assert reason == V.OK
    ft["count"][11] -= 1                  # the frame lost its allocation meanwhile
    zeroed = np.zeros(len(arr), np.int64)
    n = impl.devalidate_l1(arr, ft["count"], ft["type_count"], zeroed)
    assert list(zeroed[:n]) == [11]
    assert ft["count"][10] == before["count"][10]
    assert ft["type_count"][11] == 0 and ft["type_"][11] == V.T_WRITABLE   # type outlives refs


entry = st.one_of(
    st.just(0),
    st.builds(lambda mfn, fl: mfn << 12 | fl, st.integers(0, N + 3),
              st.sampled_from([P, P | RW, P | 0x80, P | RW | US, RW])),
)


@settings(max_examples=200, deadline=None)
@given(st.lists(entry, max_size=40), st.lists(st.integers(0, N - 1), max_size=6))
def test_matches_a_sequential_reference(entries, typed):
    """The vectorised twin agrees with a literal entry-by-entry reading of the contract."""
    ft = table()
    for mfn in typed:
        ft["type_"][mfn], ft["type_count"][mfn] = V.T_L1, 1
    ref = {k: v.copy() for k, v in ft.items()}
    (reason, index, nch), arr, changed = run(V, ft, entries, adjust=US)
    want_reason, want_index = V.OK, len(entries)
    held = []
    for i, x in enumerate(entries):
        if not x & P:
            continue
        mfn = x >> 12
        if x & 0x180:
            want_reason = V.BAD_FLAGS
        elif mfn >= N:
            want_reason = V.NO_SUCH_FRAME
        elif ref["owner"][mfn] != D or ref["count"][mfn] == 0:
            want_reason = V.NOT_OWNER
        elif x & RW and ref["type_count"][mfn] > 0 and ref["type_"][mfn] != V.T_WRITABLE:
            want_reason = V.WRITABLE_TYPE
        if want_reason:
            want_index = i
            break
        held.append(x)
        ref["count"][mfn] += 1
        if x & RW:
            ref["type_"][mfn] = V.T_WRITABLE
            ref["type_count"][mfn] += 1
    assert (reason, index) == (want_reason, want_index)
    assert np.array_equal(ft["count"], ref["count"])
    assert np.array_equal(ft["type_count"], ref["type_count"])
    assert np.array_equal(ft["type_"], ref["type_"])
    assert sorted(changed[0, :nch].tolist()) == changed[0, :nch].tolist()

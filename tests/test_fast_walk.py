"""Page walk: the compiled walker and its Python twin give the same answer, bit for bit."""

from __future__ import annotations

import importlib
import os
import shutil

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from xendbg.fast import _walk_py
from xendbg.fast import walk as selector

try:
    from xendbg.fast import _walk_c
except ImportError:          # not built: the compiled cases are skipped, the test below says why
    _walk_c = None

IMPLS = [pytest.param(_walk_py, id="python"),
         pytest.param(_walk_c, id="cython",
                      marks=pytest.mark.skipif(_walk_c is None, reason="not built"))]
needs_c = pytest.mark.skipif(_walk_c is None, reason="compiled walker not built")

P, RW, US, A, D, PS, G = 1, 2, 4, 0x20, 0x40, 0x80, 0x100
NX = 1 << 63
OK, NOT_PRESENT, BAD_FRAME, NONCANONICAL = (_walk_py.WALK_OK, _walk_py.WALK_NOT_PRESENT,
                                            _walk_py.WALK_BAD_FRAME, _walk_py.WALK_NONCANONICAL)


@pytest.fixture(params=IMPLS)
def impl(request):
    return request.param


def test_compiled_module_loaded_where_a_compiler_exists():
    if os.environ.get("XENDBG_PURE_PYTHON") or shutil.which("cc") is None:
        pytest.skip("pure-Python run or no compiler")
    assert selector.IMPLEMENTATION == "cython"
    importlib.import_module("xendbg.fast._walk_c")


def test_status_codes_agree():
    if _walk_c is None:
        pytest.skip("not built")
    for name in ("WALK_OK", "WALK_NOT_PRESENT", "WALK_BAD_FRAME", "WALK_NONCANONICAL"):
        assert getattr(_walk_c, name) == getattr(_walk_py, name)


# -- a small machine memory with hand-made tables -----------------------------------------------

class Mem:
    def __init__(self, pages: int, tail: int = 0) -> None:
        self.bytes = np.zeros(pages * 4096 + tail, np.uint8)

    def put(self, ma: int, value: int) -> None:
        self.bytes[ma:ma + 8] = np.frombuffer(int(value).to_bytes(8, "little"), np.uint8)


def va4(i4: int, i3: int, i2: int, i1: int, off: int = 0) -> int:
    va = i4 << 39 | i3 << 30 | i2 << 21 | i1 << 12 | off
    return va | 0xFFFF << 48 if i4 >= 256 else va


def test_four_level_walk_known_answer(impl):
    m = Mem(8)
    m.put(0x1000 + 511 * 8, 0x2000 | P | RW | US)      # L4[511] → L3 at 0x2000
    m.put(0x2000 + 3 * 8, 0x3000 | P | RW | US)        # L3[3]   → L2 at 0x3000
    m.put(0x3000 + 5 * 8, 0x4000 | P | US)             # L2[5]   → L1 at 0x4000 (read-only)
    m.put(0x4000 + 7 * 8, 0x6000 | P | RW | US | NX)   # L1[7]   → frame 6
    va = va4(511, 3, 5, 7, 0x123)
    status, ma, perms, entries = impl.walk(m.bytes, 0x1000, va, 4)
    assert status == OK
    assert ma == 0x6123
    assert perms == 0b010                               # read-only (L2), user, no-execute
    assert entries == (0x2000 | P | RW | US, 0x3000 | P | RW | US, 0x4000 | P | US,
                       0x6000 | P | RW | US | NX)


def test_superpages_2m_and_1g(impl):
    m = Mem(4)
    m.put(0x1000, 0x2000 | P | RW)                      # L4[0] → L3 at 0x2000
    m.put(0x2000, 0x3000 | P | RW)                      # L3[0] → L2 at 0x3000
    m.put(0x3000 + 8, 0x200000 | P | RW | PS)           # L2[1]: 2 MiB page at 2 MiB
    m.put(0x2000 + 8, 0x40000000 | P | PS)              # L3[1]: 1 GiB page at 1 GiB
    big = np.zeros(1 << 31, np.uint8)                   # lazily zero-filled by the OS
    big[:m.bytes.shape[0]] = m.bytes
    assert impl.walk(big, 0x1000, va4(0, 0, 1, 3, 0x45), 4) == \
        (OK, 0x203045, 0b101, (0x2000 | P | RW, 0x3000 | P | RW, 0x200000 | P | RW | PS))
    status, ma, perms, entries = impl.walk(big, 0x1000, va4(0, 1, 2, 3, 0x45), 4)
    assert (status, ma, perms, len(entries)) == (OK, 0x40000000 | 2 << 21 | 3 << 12 | 0x45, 0b100, 2)
    # the same 2 MiB page, in a memory too small to hold it
    assert impl.walk(m.bytes, 0x1000, va4(0, 0, 1, 0), 4)[0] == BAD_FRAME


def test_pae_walk_ignores_pdpte_permissions(impl):
    m = Mem(8)
    cr3 = 0x1000 + 0x60                                  # PDPTs are 32-byte aligned
    m.put(cr3 + 2 * 8, 0x3000 | P)                       # PDPT[2] → L2 at 0x3000 (no RW/US bits)
    m.put(0x3000 + 4 * 8, 0x4000 | P | RW | US)
    m.put(0x4000 + 9 * 8, 0x7000 | P | RW | US)
    va = 2 << 30 | 4 << 21 | 9 << 12 | 0xABC
    assert impl.walk(m.bytes, cr3 | 0x7, va, 3) == \
        (OK, 0x7ABC, 0b111, (0x3000 | P, 0x4000 | P | RW | US, 0x7000 | P | RW | US))
    # bits above 32 of the VA are dropped; PS in a PDPTE means nothing
    assert impl.walk(m.bytes, cr3, va | 1 << 40, 3)[1] == 0x7ABC
    m.put(cr3 + 2 * 8, 0x3000 | P | PS)
    assert impl.walk(m.bytes, cr3, va, 3)[1] == 0x7ABC


def test_failures(impl):
    m = Mem(4, tail=12)
    assert impl.walk(m.bytes, 0x1000, 1 << 47, 4) == (NONCANONICAL, 0, 0, ())
    assert impl.walk(m.bytes, 0x1000, 0, 4) == (NOT_PRESENT, 0, 0, (0,))
    assert impl.walk(m.bytes, 0x9000, 0, 4) == (BAD_FRAME, 0, 0, ())
    m.put(0x1000, 0x4000 | P)                            # the L3 is the 12-byte tail: entry 0 fits
    m.put(0x4000, 0x2000 | P)
    assert impl.walk(m.bytes, 0x1000, 0, 4)[0] == NOT_PRESENT
    assert impl.walk(m.bytes, 0x1000, 1 << 30, 4) == (BAD_FRAME, 0, 0, (0x4000 | P,))


# -- hypothesis: random trees -------------------------------------------------------------------

PAGES = 6
TAIL = 40                   # memory does not end on a page boundary
INDICES = (0, 1, 2, 255, 256, 510, 511)

flag_bits = st.lists(st.sampled_from([P, P, P, RW, US, A, D, PS, G, NX, 1 << 52, 1 << 62, 0x8,
                                      0x10, 0x200]), max_size=6).map(lambda bits: sum(set(bits)))
frames = st.one_of(st.integers(0, PAGES),                       # in memory, or the tail
                   st.integers(PAGES + 1, PAGES + 4),           # just outside
                   st.sampled_from([0x3FFFF, (1 << 40) - 1, 1 << 39]))   # far outside
good_entries = st.builds(lambda f, b: f << 12 | P | b, st.integers(0, PAGES - 1), flag_bits)
entry_values = st.one_of(good_entries, good_entries, good_entries,         # mostly walkable
                         st.builds(lambda f, b: f << 12 | b, frames, flag_bits),
                         st.integers(0, (1 << 64) - 1))


@st.composite
def trees(draw, pae: bool):
    mem = np.zeros(PAGES * 4096 + TAIL, np.uint8)
    table = np.frombuffer(mem[:PAGES * 4096].data, "<u8")        # a view: writes land in mem
    for page in range(PAGES):
        for index in INDICES:
            table[page * 512 + index] = draw(entry_values)
    if pae:
        top = draw(st.integers(0, PAGES * 4096 + TAIL + 64))       # any byte: the walker aligns
        for slot in range(4):                                      # give its PDPT some entries
            at = (top & ~0x1F) + slot * 8
            if at + 8 <= mem.shape[0]:
                mem[at:at + 8] = np.frombuffer(draw(entry_values).to_bytes(8, "little"), np.uint8)
    else:
        top = draw(st.integers(0, PAGES + 1)) << 12 | draw(st.sampled_from([0, 0x18, 0xFFF]))
    return mem, top


def _va(draw, levels: int) -> int:
    if levels == 3:
        idx = [draw(st.integers(0, 3)), draw(st.sampled_from(INDICES)), draw(st.sampled_from(INDICES))]
        va = idx[0] << 30 | idx[1] << 21 | idx[2] << 12
        return va | draw(st.integers(0, 0xFFF)) | draw(st.integers(0, 0xFFFF)) << 32
    idx = [draw(st.sampled_from(INDICES)) for _ in range(4)]
    va = va4(*idx) | draw(st.integers(0, 0xFFF))
    kind = draw(st.sampled_from(["canonical", "canonical", "canonical", "low-only", "random"]))
    if kind == "low-only":
        return va & ((1 << 48) - 1)                                  # upper half without the sign
    if kind == "random":
        return draw(st.integers(0, (1 << 64) - 1))
    return va


@st.composite
def walks(draw, levels: int):
    mem, top = draw(trees(levels == 3))
    return mem, top, [_va(draw, levels) for _ in range(8)]


def _agree(mem, top, vas, levels):
    for va in vas:
        expect = _walk_py.walk(mem, top, va, levels)
        got = _walk_c.walk(mem, top, va, levels)
        assert got == expect, (hex(top), hex(va))
        assert all(type(x) is int for x in got[:3] + got[3])


@needs_c
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(walks(4))
def test_four_level_agreement(case):
    _agree(*case, 4)


@needs_c
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(walks(3))
def test_pae_agreement(case):
    _agree(*case, 3)


@needs_c
@given(va=st.one_of(st.integers(-(1 << 70), -1), st.integers(1 << 64, 1 << 70),
                    st.integers(0, (1 << 64) - 1)),
       top=st.one_of(st.integers(0, 0x4000), st.integers(1 << 64, 1 << 70),
                     st.integers(-(1 << 70), -1)),
       levels=st.sampled_from([3, 4]))
@example(va=-1, top=0x1000, levels=3)
@example(va=1 << 64, top=0x1000, levels=4)
@example(va=0, top=-4096 + 0x1000, levels=4)
def test_arguments_beyond_64_bits(va, top, levels):
    """Python ints of any size, as the twin's arithmetic sees them (a negative PAE cr3 is left
    out: the twin indexes its array from the end there, which is no machine address)."""
    if levels == 3 and top < 0:
        assert _walk_c.walk(np.zeros(0x4000, np.uint8), top, va, levels) == (BAD_FRAME, 0, 0, ())
        return
    m = Mem(4)
    m.put(0x1000 + 511 * 8, 0x2000 | P | RW)
    m.put(0x1000, 0x2000 | P | US)
    m.put(0x1000 + 3 * 8, 0x2000 | P | US)              # PDPT slot 3 (PAE, cr3 = 0x1000)
    _agree(m.bytes, top, [va], levels)


@needs_c
def test_numpy_integer_arguments():
    m = Mem(4)
    m.put(0x1000, 0x2000 | P)
    for args in ((np.uint64(0x1000), np.uint64(0x123), np.int64(4)),
                 (np.int64(0x1000), np.uint32(0x123), 3)):
        assert _walk_c.walk(m.bytes, *args) == _walk_py.walk(m.bytes, *args)


# -- a real guest's tables ------------------------------------------------------------------------

@needs_c
@pytest.mark.parametrize("name", ["hello-pv64", "hello-pv32"])
def test_agrees_on_a_built_guest(lab_machine, name):
    m = lab_machine(name)
    mem, cr3, levels = m.memory.bytes, m.cpu.cr3, m.abi.page_levels
    base = m.domain.virt_base
    vas = [base + (i << 12) + 0x7F8 for i in range(0, 4096, 3)]       # 16 MiB of the guest
    vas += [m.layout.entry, m.abi.hypervisor_start, (1 << m.abi.bits) - 8, 0]
    ok = 0
    for va in vas:
        expect = _walk_py.walk(mem, cr3, va, levels)
        assert _walk_c.walk(mem, cr3, va, levels) == expect, hex(va)
        ok += expect[0] == OK
        if expect[0] == OK:
            assert m.guest.translate(va) == expect[1]
    assert ok > 100

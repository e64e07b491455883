"""The MMU's fast path: page walks and L1 validation, the Cython modules against their Python twins.

1. **Walks.** A populated 4-level tree over 256 MiB of machine memory (one L4, one L3, one L2 and
   128 L1 tables mapping every frame, 4 KiB pages) and a fixed list of random VAs inside it; walks
   per second with ``_walk_c.walk`` and with ``_walk_py.walk``, the same VAs, the same results.
2. **Pin validation.** A ``hello-pv64`` machine built with ``BuildConfig(memory_mib=256)``; its
   65 536 guest frames are mapped by 128 L1 tables the way a PV kernel's direct map does it
   (read-write, except the frames Xen holds as page tables, mapped read-only), and every one of
   them is validated (``validate_l1``, the loop of ``promote_l1_table``) against a copy of the
   machine's real frame table — then devalidated again (``devalidate_l1``, ``demote_l1_table``'s
   loop). Each twin starts from the same copy; the row checks that both leave the same frame table.

Every ratio is between two measurements of the same run (medians, interleaved repetitions).

    python bench/bench_mmu.py
"""

from __future__ import annotations

import os
import statistics
import time

import numpy as np

from xendbg.fast import _validate_py, _walk_py

try:
    from xendbg.fast import _validate_c, _walk_c
except ImportError:          # not built: the rows say so instead of timing the twin twice
    _validate_c = _walk_c = None

QUICK = os.environ.get("XENDBG_BENCH_QUICK") == "1"
WALKS = 20_000 if QUICK else 200_000
REPEAT = 3 if QUICK else 7
MEMORY_MIB = 256

P, RW, US, A, D = 1, 2, 4, 0x20, 0x40


# -- 1. walks ---------------------------------------------------------------------------------------

def populated_tree(mib: int) -> tuple[np.ndarray, int]:
    """Machine memory of ``mib`` MiB whose first frames hold a 4-level tree mapping VA 0..mib MiB
    onto frames 0..n-1 (identity, 4 KiB pages). Returns (memory, cr3)."""
    frames = mib << 8
    mem = np.zeros(mib << 20, np.uint8)
    l4, l3, l2, first_l1 = 0, 1, 2, 3
    nl1 = frames // 512
    u64 = mem[:(first_l1 + nl1) << 12].view("<u8")
    u64[l4 * 512] = l3 << 12 | P | RW | US
    u64[l3 * 512] = l2 << 12 | P | RW | US
    u64[l2 * 512:l2 * 512 + nl1] = (np.arange(first_l1, first_l1 + nl1, dtype=np.uint64) << 12
                                    | np.uint64(P | RW | US))
    u64[first_l1 * 512:(first_l1 + nl1) * 512] = (np.arange(frames, dtype=np.uint64) << 12
                                                  | np.uint64(P | RW | US | A | D))
    return mem, l4 << 12


def time_walks(walk, mem: np.ndarray, cr3: int, vas: list[int]) -> tuple[float, int]:
    ok = 0
    start = time.perf_counter()
    for va in vas:
        ok += walk(mem, cr3, va, 4)[0] == 0
    return len(vas) / (time.perf_counter() - start), ok


def walk_rows() -> list[dict]:
    mem, cr3 = populated_tree(MEMORY_MIB)
    rng = np.random.default_rng(3)
    vas = rng.integers(0, MEMORY_MIB << 20, WALKS, dtype=np.int64).tolist()
    same = all(_walk_c.walk(mem, cr3, va, 4) == _walk_py.walk(mem, cr3, va, 4)
               for va in vas[:2000])
    fast, slow, oks = [], [], set()
    for _ in range(REPEAT):
        rate, ok = time_walks(_walk_c.walk, mem, cr3, vas)
        fast.append(rate)
        oks.add(ok)
        rate, ok = time_walks(_walk_py.walk, mem, cr3, vas)
        slow.append(rate)
        oks.add(ok)
    return [{
        "what": f"page walk, 4-level, 4 KiB pages, random VAs in a {MEMORY_MIB} MiB direct map",
        "xendbg": statistics.median(fast), "baseline": statistics.median(slow),
        "baseline_name": "_walk_py (the pure-Python twin)", "unit": "walks/s",
        "higher_is_better": True, "ok": same and oks == {len(vas)},
        "note": f"median of {REPEAT} × {len(vas):,} walks; results equal on the first 2,000"}]


# -- 2. pin validation ------------------------------------------------------------------------------

def direct_map_l1s(pt, p2m: np.ndarray) -> np.ndarray:
    """The L1 tables of a direct map of every guest frame, shape (n/512, 512), as a PV kernel
    builds them: frames Xen holds as page tables (or descriptor tables) are mapped read-only."""
    mfns = p2m.astype(np.uint64)
    idx = p2m.astype(np.int64)
    typed = (pt.type_count[idx] > 0) & (pt.type[idx] != _validate_py.T_WRITABLE)
    flags = np.where(typed, np.uint64(P | A), np.uint64(P | RW | A | D))
    entries = mfns << np.uint64(12) | flags
    return entries.reshape(-1, 512)


class FrameTable:
    """A private copy of the MMU's frame-table arrays (``owner`` is only read: shared)."""

    def __init__(self, owner, count, type_, type_count, flags) -> None:
        self.owner = owner
        self.count = count.copy()
        self.type_ = type_.copy()
        self.type_count = type_count.copy()
        self.flags = flags.copy()

    def copy(self) -> FrameTable:
        return FrameTable(self.owner, self.count, self.type_, self.type_count, self.flags)

    def same(self, other: FrameTable) -> bool:
        return all(np.array_equal(getattr(self, n), getattr(other, n))
                   for n in ("count", "type_", "type_count", "flags"))


def time_pin(impl, pt, l1s: np.ndarray) -> tuple[float, float, FrameTable, FrameTable]:
    """(validate ms, devalidate ms, frame table after validation, after devalidation)."""
    ft = FrameTable(pt.owner, pt.count, pt.type, pt.type_count, pt.flags)
    tables = l1s.copy()
    changed = np.zeros((2, 512), np.int64)
    zeroed = np.zeros(512, np.int64)
    args = (ft.owner, ft.count, ft.type_, ft.type_count, ft.flags, changed)
    validate, devalidate = impl.validate_l1, impl.devalidate_l1
    start = time.perf_counter()
    for table in tables:
        reason, _index, _nch = validate(table, pt.domid, pt.l1_disallow, pt.user_bit, *args)
        if reason:
            raise RuntimeError(f"{impl.__name__}: a direct-map L1 did not validate ({reason})")
    validated = time.perf_counter() - start
    after = ft.copy()
    start = time.perf_counter()
    for table in tables:
        devalidate(table, ft.count, ft.type_count, zeroed)
    devalidated = time.perf_counter() - start
    return validated * 1e3, devalidated * 1e3, after, ft


def pin_rows() -> list[dict]:
    from xendbg.guests import lab_image
    from xendbg.machine.builder import BuildConfig
    from xendbg.machine.loader import load_kernel
    from xendbg.machine.machine import Machine

    m = Machine(load_kernel(lab_image("hello-pv64")), BuildConfig(memory_mib=MEMORY_MIB))
    pt = m.mmu.pt
    l1s = direct_map_l1s(pt, np.asarray(m.domain.p2m))
    fast_v, fast_d, slow_v, slow_d = [], [], [], []
    same = True
    for _ in range(REPEAT):
        v, d, after_c, end_c = time_pin(_validate_c, pt, l1s)
        fast_v.append(v)
        fast_d.append(d)
        v, d, after_py, end_py = time_pin(_validate_py, pt, l1s)
        slow_v.append(v)
        slow_d.append(d)
        same = same and after_c.same(after_py) and end_c.same(end_py) \
            and np.array_equal(end_c.count, pt.count) and np.array_equal(end_c.type_count, pt.type_count)
    note = (f"median of {REPEAT}; {len(l1s)} L1 tables × 512 entries = {l1s.size:,} frames "
            f"of a {MEMORY_MIB} MiB hello-pv64; both twins leave the same frame table")
    base = {"baseline_name": "_validate_py (the numpy twin)", "unit": "ms",
            "higher_is_better": False, "ok": same, "note": note}
    return [
        {"what": f"pin validation of a {MEMORY_MIB} MiB guest's direct map (validate_l1 × "
                 f"{len(l1s)})", "xendbg": statistics.median(fast_v),
         "baseline": statistics.median(slow_v), **base},
        {"what": f"unpin of the same tables (devalidate_l1 × {len(l1s)})",
         "xendbg": statistics.median(fast_d), "baseline": statistics.median(slow_d), **base},
    ]


def run() -> list[dict]:
    if _walk_c is None or _validate_c is None:
        return [{"what": "MMU fast path (page walk, L1 validation)", "xendbg": "not built",
                 "baseline": None, "ok": False,
                 "note": "the Cython modules _walk_c/_validate_c did not build; see setup.py"}]
    return walk_rows() + pin_rows()


if __name__ == "__main__":
    for row in run():
        print(row)

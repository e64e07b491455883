"""The fuzzers' long forms: 1 000 000 random hypercalls, 10 000 mutated images per format.

Hypercalls: ``python -m xendbg.fuzz hypercalls`` for hello-pv64 and hello-pv32 (half the calls
each), in two processes at once; every call is checked (see ``xendbg/fuzz/hypercalls.py``). The
rate includes the checks and the domains made along the way; its baseline is this machine's null
hypercall rate (``bench_hypercall.py``'s loop, measured here first), so the ratio says what a fuzzed
call costs next to the cheapest call there is.

Files: ``python -m xendbg.fuzz files`` over every format, split between two processes; the
baseline is loading and building the format's unmutated seed images.

A row is ok when the run found nothing new: findings that match a known, reported issue
(``xendbg/fuzz/known.py``) are counted in the note.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import bench_hypercall

QUICK = os.environ.get("XENDBG_BENCH_QUICK") == "1"
CALLS = 10_000 if QUICK else 1_000_000
CASES = 300 if QUICK else 10_000
CLI = 2 if QUICK else 10
SEED = 9


def _parallel(jobs: list[list[str]]) -> list[list[dict]]:
    """Run ``python -m xendbg.fuzz ARGS --json F`` jobs side by side; their JSON reports."""
    with tempfile.TemporaryDirectory() as tmp:
        procs = []
        for i, args in enumerate(jobs):
            out = os.path.join(tmp, f"{i}.json")
            procs.append((subprocess.Popen([sys.executable, "-m", "xendbg.fuzz", *args,
                                            "--json", out], stdout=subprocess.PIPE,
                                           stderr=subprocess.STDOUT, text=True), out))
        results = []
        for proc, out in procs:
            text, _ = proc.communicate()
            if not os.path.exists(out):
                raise RuntimeError(f"fuzzer failed (status {proc.returncode}): {text[-2000:]}")
            results.append(json.load(open(out)))
        return results


def hypercall_rows() -> list[dict]:
    null = statistics.median(bench_hypercall.xendbg_rate("hello-pv64", 20_000) for _ in range(3))
    guests = ("hello-pv64", "hello-pv32")
    start = time.perf_counter()
    reports = _parallel([["hypercalls", "--guest", g, "--calls", str(CALLS // 2), "--seed",
                          str(SEED), "--quiet"] for g in guests])
    wall = time.perf_counter() - start
    rows = []
    total_calls = total_new = 0
    known: dict[str, int] = {}
    for (report,) in reports:
        total_calls += report["calls"]
        total_new += len(report["findings"])
        for k, v in report["known"].items():
            known[k] = known.get(k, 0) + v
        rows.append({
            "what": f"hypercall fuzzer, {report['guest']}: random calls, invariants checked after "
                    "each",
            "xendbg": report["calls_per_s"], "baseline": null,
            "baseline_name": "null hypercalls, pv64 guest loop", "unit": "calls/s",
            "ok": not report["findings"],
            "note": f"{report['calls']:,} calls on {report['domains']:,} domains, seed {SEED}, "
                    f"{len(report['findings'])} new findings, known issues "
                    f"{report['known'] or 'none'}, digest {report['digest'][:12]}"})
        for text in report["findings"][:3]:
            rows[-1]["note"] += f"; FINDING: {text.splitlines()[0]}"
    rows.append({"what": "hypercall fuzzer, both ABIs (two processes)",
                 "xendbg": total_calls / wall, "baseline": None, "unit": "calls/s",
                 "ok": total_new == 0 and total_calls >= CALLS,
                 "note": f"{total_calls:,} calls in {wall:.0f} s, {total_new} new findings, "
                         f"known issues {known or 'none'}"})
    return rows


def _seed_rate(fmt: str) -> float:
    from xendbg.fuzz.files import _seeds, check_case
    seeds = _seeds(fmt)
    n = 0
    start = time.perf_counter()
    while time.perf_counter() - start < 1.0:
        for s in seeds:
            check_case(s.data)
            n += 1
    return n / (time.perf_counter() - start)


def file_rows() -> list[dict]:
    from xendbg.fuzz.files import FORMATS
    base = {fmt: _seed_rate(fmt) for fmt in FORMATS}
    halves = [list(FORMATS[0::2]), list(FORMATS[1::2])]
    jobs = [["files", *sum((["--format", f] for f in half), []), "--cases", str(CASES),
             "--cli", str(CLI), "--seed", str(SEED)] for half in halves]
    rows = []
    by_format = {r["format"]: r for reports in _parallel(jobs) for r in reports}
    for fmt in FORMATS:
        r = by_format[fmt]
        outcomes = ", ".join(f"{v:,} {k}" for k, v in sorted(r["outcomes"].items()))
        rows.append({
            "what": f"file fuzzer, {fmt}: mutated images through load_kernel, build_domain "
                    "and a few through `xendbg run`",
            "xendbg": r["cases_per_s"], "baseline": base[fmt],
            "baseline_name": "the unmutated seeds", "unit": "cases/s",
            "ok": not r["failures"],
            "note": f"{r['cases']:,} cases ({outcomes}; {r['cli_cases']} via the CLI), "
                    f"{len(r['failures'])} new failures, known issues {r['known'] or 'none'}, "
                    f"slowest {r['slowest'] * 1000:.0f} ms"})
        for text in r["failures"][:3]:
            rows[-1]["note"] += f"; FAILURE: {text.splitlines()[0]}"
    return rows


def run() -> list[dict]:
    rows = []
    for part in (hypercall_rows, file_rows):
        try:
            rows += part()
        except Exception as exc:                   # noqa: BLE001 - one part's failure is a row
            rows.append({"what": f"{part.__name__}: failed", "xendbg": "—", "ok": False,
                         "note": str(exc)[-1500:]})
    return rows


if __name__ == "__main__":
    for row in run():
        print(row)

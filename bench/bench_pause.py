"""Pause latency: how long after ``Session.pause()`` (from another thread) the running guest stops.

The guest is ``spin-pv64``, which loops forever without a hypercall, so only the pause stops it. For
each of 20 rounds the emulator thread runs ``continue``; once the guest has run for a while the main
thread calls ``pause()`` and measures the wall time until ``continue`` returns. The pause is a flag
polled by the compiled block hook at every block boundary (DESIGN.md "Pausing"), so the latency is
the time to the next block boundary plus the return through Python.

As a baseline measured in the same run, the same is done with a pause requested *before* the run
starts (the stop is then at the first block): the difference is what the running guest adds.

    python bench/bench_pause.py [--rounds 20]

``run()`` (for ``bench/run.py``) reports the medians of both, with the worst cases in the note;
``XENDBG_BENCH_QUICK=1`` makes it 5 rounds instead of 20.
"""

from __future__ import annotations

import argparse
import os
import statistics
import threading
import time

from xendbg.debugger import Session, symbols_for_image
from xendbg.fast.blockhook import IMPLEMENTATION
from xendbg.guests import lab_image
from xendbg.machine.builder import BuildConfig
from xendbg.machine.loader import load_kernel
from xendbg.machine.machine import Machine

QUICK = os.environ.get("XENDBG_BENCH_QUICK") == "1"
ROUNDS = 5 if QUICK else 20
RUN_FOR = 0.05             # seconds the guest runs before each pause


def measure(rounds: int, run_for: float) -> tuple[list[float], list[float], int]:
    image = load_kernel(lab_image("spin-pv64"))
    m = Machine(image, BuildConfig(memory_mib=16))
    s = Session(m, symbols_for_image(image))
    latencies, baseline = [], []
    for _ in range(rounds):
        done = threading.Event()
        stamp: list[float] = []

        def worker(done: threading.Event = done, stamp: list[float] = stamp) -> None:
            result = s.execute("continue")
            stamp.append(time.perf_counter())
            assert result.ok and result.stop.reason == "pause", result.text
            done.set()

        t = threading.Thread(target=worker)
        t.start()
        time.sleep(run_for)
        asked = time.perf_counter()
        s.pause()
        if not done.wait(10):
            raise SystemExit("the guest did not pause within 10 s")
        t.join()
        latencies.append(stamp[0] - asked)
        # Baseline: a pause already pending when the run starts.
        asked = time.perf_counter()
        s.pause()
        result = s.execute("continue")
        baseline.append(time.perf_counter() - asked)
        assert result.stop.reason == "pause", result.text
    return latencies, baseline, m.insns


def run() -> list[dict]:
    lat, base, insns = measure(ROUNDS, RUN_FOR)
    ms = [x * 1e3 for x in lat]
    bms = [x * 1e3 for x in base]
    note = (f"median of {len(ms)} rounds, each after {RUN_FOR * 1e3:.0f} ms of running; worst "
            f"{max(ms):.3f} ms (baseline worst {max(bms):.3f} ms); block counter {IMPLEMENTATION}, "
            f"{insns:,} guest instructions in all")
    return [{"what": "pause latency: Session.pause() from another thread until `continue` returns, "
                     "spin-pv64 running (no hypercalls)",
             "xendbg": statistics.median(ms), "baseline": statistics.median(bms),
             "baseline_name": "the same pause already pending when `continue` starts",
             "unit": "ms", "higher_is_better": False, "note": note}]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=ROUNDS)
    parser.add_argument("--run-for", type=float, default=RUN_FOR, help="seconds before each pause")
    args = parser.parse_args()
    lat, base, insns = measure(args.rounds, args.run_for)
    ms = [x * 1e3 for x in lat]
    bms = [x * 1e3 for x in base]
    print(f"block counter: {IMPLEMENTATION}; guest instructions run: {insns}")
    print(f"pause latency while running, {len(ms)} rounds: median {statistics.median(ms):.3f} ms, "
          f"worst {max(ms):.3f} ms")
    print(f"baseline (pause pending at start): median {statistics.median(bms):.3f} ms, "
          f"worst {max(bms):.3f} ms")
    print(f"ratio of medians: {statistics.median(ms) / max(statistics.median(bms), 1e-9):.1f}x")


if __name__ == "__main__":
    main()

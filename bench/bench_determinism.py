"""Determinism: every built lab guest, and GRUB to its prompt, give the same trace twice.

Each guest runs twice, each time in a fresh process with a different ``PYTHONHASHSEED`` (so that
nothing may depend on set or dict order of strings), up to its end or an instruction cap, with a
listener recording every event the machine emits (hypercalls with arguments and results, traps,
upcalls, console output, the end) and the instruction count at each. The row compares the SHA-256
of the two traces; the baseline column is the second run's digest.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

QUICK = os.environ.get("XENDBG_BENCH_QUICK") == "1"
LAB_CAP = 20_000_000
GRUB_CAP = 40_000_000


def trace_digest(guest: str, cap: int, until: str | None) -> dict:
    """Run ``guest`` once in this process; the digest of everything it did."""
    from xendbg.guests import resolve_kernel
    from xendbg.machine.builder import BuildConfig
    from xendbg.machine.loader import load_kernel
    from xendbg.machine.machine import Machine
    from xendbg.runner import default_memory

    image = load_kernel(resolve_kernel(guest, progress=lambda msg: None))
    m = Machine(image, BuildConfig(memory_mib=default_memory(image)))
    h = hashlib.sha256()
    count = {"events": 0}
    console = bytearray()

    def listen(event) -> None:
        count["events"] += 1
        h.update(repr((event.kind, event.insns, sorted(event.data.items()))).encode())
        if event.kind == "console":
            console.extend(event.data["data"])
            if until and until.encode() in console:
                m.request_stop("until")

    m.listeners.append(listen)
    reason = m.run(max_insns=cap)
    h.update(repr((reason, m.insns, m.domain.crashed)).encode())
    return {"digest": h.hexdigest(), "events": count["events"], "insns": m.insns,
            "reason": reason}


def _twice(guest: str, cap: int, until: str | None) -> tuple[dict, dict]:
    runs = []
    for hash_seed in ("1", "2"):
        env = dict(os.environ, PYTHONHASHSEED=hash_seed)
        proc = subprocess.run([sys.executable, __file__, guest, str(cap), until or ""],
                              capture_output=True, text=True, env=env, timeout=3600)
        if proc.returncode:
            raise RuntimeError(f"{guest}: {proc.stderr.strip().splitlines()[-1:]}")
        runs.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    return runs[0], runs[1]


def run() -> list[dict]:
    from xendbg.guests import LAB_GUESTS, GuestError, fetch, lab_image

    plan = [(name, LAB_CAP, None) for name in LAB_GUESTS if lab_image(name).exists()]
    try:
        fetch("grub-x86_64", progress=lambda msg: None)
        plan.append(("grub-x86_64", GRUB_CAP, "grub>"))
    except GuestError as exc:
        grub_error = str(exc)
    else:
        grub_error = None
    if QUICK:
        plan = plan[:2]
    rows = []
    for guest, cap, until in plan:
        a, b = _twice(guest, cap, until)
        same = a["digest"] == b["digest"]
        rows.append({"what": f"determinism: {guest}, trace digest of two runs"
                             + (f" to {until!r}" if until else ""),
                     "xendbg": a["digest"][:16], "baseline": b["digest"][:16],
                     "baseline_name": "second run", "ok": same,
                     "note": f"{a['events']:,} events, {a['insns']:,} instructions, stopped: "
                             f"{a['reason']}" + ("" if same else f" / second: {b['events']:,} "
                                                 f"events, {b['insns']:,} instructions")})
    if grub_error and not QUICK:
        rows.append({"what": "determinism: grub-x86_64", "xendbg": "not run", "ok": None,
                     "note": f"GRUB could not be fetched: {grub_error}"})
    return rows


if __name__ == "__main__":
    if len(sys.argv) == 4:
        print(json.dumps(trace_digest(sys.argv[1], int(sys.argv[2]), sys.argv[3] or None)))
    else:
        for row in run():
            print(row)

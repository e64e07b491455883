"""Slicing a run changes nothing (issue #5): virtual time is made of executed instructions only.

``Machine.run(max_insns)`` stops at a block boundary, and so do a pause and a listener's stop; the
block counter counts a block only when it runs (a block at whose start the run stops is counted by
the next run, which executes it). So running a guest to its end in one call, in slices of N
instructions (N = 1 included: a block per call), or with a pause at every hypercall must end with
the same instruction count, the same virtual time and TSC, the same events at the same counts (the
``--trace`` records), and the same console output.
"""

from __future__ import annotations

import hashlib
import json

import pytest

from xendbg.fast.blockhook import IMPLEMENTATION as COUNTER

SMALL_GUESTS = ["hello-pv64", "hello-pv32", "events-pv64", "events-pv32", "mmu-pv64", "mmu-pv32"]
TIME_GUESTS = ["time-pv64", "time-pv32"]
LIMIT = 3_000_000_000          # far beyond any of them (time-pv*: about 1.2e9 instructions)


def _record(event) -> dict:
    """What ``xendbg run --trace`` writes for a hypercall; the kind and count for other events."""
    if event.kind == "hypercall":
        d = event.data
        return {"insns": event.insns, "nr": d["nr"], "name": d["name"],
                "args": dict(zip(d["arg_names"], d["args"], strict=False)),
                "result": d["result"], "error": d["error"]}
    if event.kind == "console":
        return {"insns": event.insns, "console": event.data["data"].hex()}
    return {"insns": event.insns, "kind": event.kind}


def _run(lab_machine, name: str, mode: str, n: int = 0) -> dict:
    m = lab_machine(name)
    records: list[dict] = []
    m.listeners.append(lambda ev: records.append(_record(ev)))
    if mode == "pause":
        # A pause request at every hypercall: stops at the next block boundary, as a UI pause does.
        m.listeners.append(lambda ev: m.pause() if ev.kind == "hypercall" else None)
    calls = 0
    while True:
        calls += 1
        assert calls < 10_000_000
        if mode == "whole":
            reason = m.run(LIMIT)
        elif mode == "slices":
            reason = m.run(min(n, LIMIT - m.insns))
        else:
            reason = m.run(LIMIT - m.insns)
        if reason not in ("budget", "pause") or m.insns >= LIMIT:
            break
    assert m.internal_errors == []
    trace = "".join(json.dumps(r) + "\n" for r in records if "nr" in r)
    return {"reason": reason, "insns": m.insns, "now_ns": m.clock.now_ns(), "tsc": m.clock.tsc(),
            "trace": hashlib.sha256(trace.encode()).hexdigest(), "hypercalls": trace.count("\n"),
            "events": records, "calls": calls}


def _same(a: dict, b: dict) -> None:
    for key in ("reason", "insns", "now_ns", "tsc", "trace"):
        assert a[key] == b[key], key
    assert a["events"] == b["events"]


@pytest.mark.parametrize("name", SMALL_GUESTS)
def test_slices_of_any_size_change_nothing(name, lab_machine):
    whole = _run(lab_machine, name, "whole")
    assert whole["reason"] == "shutdown" and whole["hypercalls"] > 10
    for n in (1, 7, 1000):
        sliced = _run(lab_machine, name, "slices", n)
        assert sliced["calls"] > whole["insns"] // max(n, 50)      # it really was cut up
        _same(whole, sliced)


@pytest.mark.parametrize("name", ["hello-pv64", "events-pv32"])
def test_pauses_change_nothing(name, lab_machine):
    whole = _run(lab_machine, name, "whole")
    paused = _run(lab_machine, name, "pause")
    assert paused["calls"] > 10
    _same(whole, paused)


@pytest.mark.skipif(COUNTER != "cython", reason="1.2e9 instructions: minutes with the Python twin")
@pytest.mark.parametrize("name", TIME_GUESTS)
def test_time_guest_sliced_keeps_its_virtual_time(name, lab_machine):
    # The time guests stop at timer deadlines, block and fast-forward: slices that fall on, just
    # before and just after those boundaries must not move a single event.
    whole = _run(lab_machine, name, "whole")
    assert whole["reason"] == "shutdown" and whole["insns"] > 10**9
    for n in (1_000_003, 9_999_991):
        _same(whole, _run(lab_machine, name, "slices", n))

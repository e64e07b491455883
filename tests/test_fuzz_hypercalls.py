"""The hypercall fuzzer (``xendbg.fuzz.hypercalls``): its CI form, and proof that its checks bite.

The CI form is 20 000 calls (10 000 per ABI) with a fixed seed; a failure prints each finding with
the command that replays it. Findings that match a known, reported issue (``xendbg/fuzz/known.py``)
are listed but do not fail the test.
"""

from __future__ import annotations

import dataclasses

import pytest

from xendbg.fuzz import invariants
from xendbg.fuzz.hypercalls import fuzz_hypercalls
from xendbg.fuzz.invariants import Invariants
from xendbg.machine import hypercalls
from xendbg.machine.abi import xen as X

SEED = 2026


def _show(findings) -> str:
    return "\n\n".join(f.describe() for f in findings[:5])


@pytest.mark.parametrize("guest", ["hello-pv64", "hello-pv32"])
def test_ten_thousand_random_calls_per_abi_break_nothing(guest):
    report = fuzz_hypercalls(guest, SEED, 10_000)
    print(report.summary())
    assert report.calls == 10_000
    assert all(report.per_nr[nr] for nr in range(64)), "every hypercall number 0-63 is tried"
    assert report.stops["fuzz"] > report.calls // 2, "most calls return to their caller"
    assert not report.unknown, _show(report.unknown)


def test_a_seed_reproduces_a_run_with_or_without_fork():
    a = fuzz_hypercalls("hello-pv64", 11, 300)
    b = fuzz_hypercalls("hello-pv64", 11, 300, fork=False)
    c = fuzz_hypercalls("hello-pv64", 12, 300)
    assert a.digest == b.digest
    assert a.digest != c.digest
    assert a.per_nr == b.per_nr and a.results == b.results


def test_an_exception_in_a_handler_is_an_escape(monkeypatch):
    def boom(m, cmd, arg):
        raise ValueError("boom")

    row = hypercalls.BY_NR[X.HYPERVISOR_xen_version]
    monkeypatch.setitem(hypercalls.BY_NR, row.nr, dataclasses.replace(row, handler=boom))
    report = fuzz_hypercalls("hello-pv64", 1, 300, stop_on_first=True)
    assert report.escapes, report.summary()
    first = report.escapes[0]
    assert first.message == "ValueError: boom" and first.name == "xen_version"
    assert "replay: python -m xendbg.fuzz hypercalls" in first.describe()


def test_event_channel_checks_catch_broken_state(lab_machine):
    from xendbg.machine.events.evtchn import Port

    m = lab_machine("hello-pv64")
    inv = Invariants(m)
    inv.before()
    assert inv.after("fuzz") == []
    m.evtchn.ports[40] = Port(41, X.EVTCHNSTAT_virq, virq=3)      # wrong number, unregistered
    inv.before()
    m.evtchn.delivery.set_pending(55, m.vcpu.vcpu_info_ma)       # Xen raising a closed port
    found = [v.message for v in inv.after("fuzz")]
    assert any("recorded as port 41" in f for f in found), found
    assert any("VIRQ 3 not registered" in f for f in found), found
    assert any("closed port 55 pending" in f for f in found), found


def test_mmu_checker_reports_what_a_call_made_worse(lab_machine, monkeypatch):
    state = {"bad": ["present from the start"]}
    monkeypatch.setattr(invariants, "_mmu_checker", lambda: lambda m: list(state["bad"]))
    inv = Invariants(lab_machine("hello-pv64"))
    inv.before()
    assert inv.after("fuzz") == []                 # already there when the domain was built
    state["bad"].append("mfn 0x42 mapped writable while a page table")
    inv.before()
    assert [v.message for v in inv.after("fuzz")] == ["mfn 0x42 mapped writable while a page table"]
    inv.before()
    assert inv.after("fuzz", mmu=False) == []

    def broken(m):
        raise KeyError("frame table")

    monkeypatch.setattr(invariants, "_mmu_checker", lambda: broken)
    inv = Invariants(lab_machine("hello-pv64"))
    inv.before()
    assert [v.kind for v in inv.after("fuzz")] == ["checker"]


def test_domain_life_checks(lab_machine):
    m = lab_machine("hello-pv64")
    inv = Invariants(m)
    inv.before()
    assert [v.kind for v in inv.after("pause")] == ["life"]
    m.domain.crashed = ""
    inv.before()
    assert any("without a reason" in v.message for v in inv.after("crash"))


def test_a_systematic_finding_is_counted_but_kept_only_a_few_times():
    from xendbg.fuzz.hypercalls import KEEP, Finding, HypercallReport

    report = HypercallReport(guest="g", seed=1)
    for i in range(50):
        report.add(Finding(kind="evtchn", message=f"port {i} was closed but is still pending",
                           detail="", guest="g", seed=1, call=i, domain_first_call=0, nr=32,
                           name="event_channel_op", args=[], via="trap", buffers=[]))
    assert report.new_count == 50 and len(report.findings) == KEEP


def test_a_copy_that_dies_is_a_finding_and_the_run_goes_on(monkeypatch):
    import os
    import signal

    from xendbg.fuzz import hypercalls as fh

    real = fh._run_domain

    def dies_once(target, rng, first, limit, **kw):
        if first == 5:
            os.kill(os.getpid(), signal.SIGSEGV)        # as a crash inside Unicorn would
        return real(target, rng, first, limit, **kw)

    monkeypatch.setattr(fh, "_run_domain", dies_once)
    report = fuzz_hypercalls("hello-pv64", 1, 40, lifetime=5, fork=True)
    assert report.calls == 40
    assert [f.message for f in report.unknown] == ["the fuzzed copy of xendbg died (signal 11)"]

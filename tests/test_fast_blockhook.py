"""The block counter: the compiled hook and its Python twin count and stop identically."""

from __future__ import annotations

import importlib
import os

import pytest

from xendbg.fast import _blockhook_py
from xendbg.fast import blockhook as selector


def _impls():
    impls = [pytest.param(_blockhook_py.BlockCounter, id="python")]
    try:
        from xendbg.fast import _blockhook_c
        impls.append(pytest.param(_blockhook_c.BlockCounter, id="cython"))
    except ImportError:
        impls.append(pytest.param(None, id="cython", marks=pytest.mark.skip("not built")))
    return impls


def test_compiled_module_loaded_where_a_compiler_exists():
    import shutil
    if os.environ.get("XENDBG_PURE_PYTHON") or shutil.which("cc") is None:
        pytest.skip("pure-Python run or no compiler")
    assert selector.IMPLEMENTATION == "cython"
    importlib.import_module("xendbg.fast._blockhook_c")


def _run_guest(counter_cls, lab_machine, name, budget=None):
    m = lab_machine(name)
    m.counter.remove()
    m.counter = counter_cls(m.cpu.uc, m._icount_of)
    m.counter.install()
    events = []
    m.listeners.append(lambda e: events.append((e.kind, e.insns)))
    reason = m.run(budget)
    return m, reason, events


@pytest.mark.parametrize("impl", _impls())
@pytest.mark.parametrize("name", ["hello-pv64", "hello-pv32"])
def test_counts_and_trace_agree_with_the_twin(impl, name, lab_machine):
    m_py, r_py, ev_py = _run_guest(_blockhook_py.BlockCounter, lab_machine, name)
    m_x, r_x, ev_x = _run_guest(impl, lab_machine, name)
    assert r_py == r_x == "shutdown"
    assert m_py.insns == m_x.insns > 1000
    assert ev_py == ev_x


@pytest.mark.parametrize("impl", _impls())
def test_budget_stops_at_the_same_place(impl, lab_machine):
    m_py, r_py, _ = _run_guest(_blockhook_py.BlockCounter, lab_machine, "hello-pv64", 3000)
    m_x, r_x, _ = _run_guest(impl, lab_machine, "hello-pv64", 3000)
    assert r_py == r_x == "budget"
    assert m_py.insns == m_x.insns >= 3000
    assert m_py.cpu.ip == m_x.cpu.ip
    # and the run can continue to the end from there
    assert m_x.run() == "shutdown"


@pytest.mark.parametrize("impl", _impls())
def test_request_stop_from_another_thread(impl, lab_machine):
    import threading
    m = lab_machine("hello-pv64")
    m.counter.remove()
    m.counter = impl(m.cpu.uc, m._icount_of)
    m.counter.install()
    m.counter.request_stop()          # already requested: stops at the first block
    assert m.run() == "pause"
    insns = m.insns
    t = threading.Thread(target=m.pause)      # a request made between runs is not lost
    t.start()
    t.join()
    assert m.run() == "pause"
    assert m.insns - insns < 100
    assert m.run() == "shutdown"              # a request is consumed by the stop it causes

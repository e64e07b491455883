"""The hypercall hot path: events routed by kind, rows resolved per ABI, the --trace writer."""

import dataclasses
import io
import json

from xendbg.machine import hypercalls
from xendbg.machine.abi import xen as X
from xendbg.machine.machine import Event
from xendbg.runner import _TraceWriter


def test_a_listener_gets_only_the_kinds_it_asks_for(lab_machine):
    m = lab_machine("hello-pv64")
    everything, some = [], []

    def picky(event):
        some.append(event.kind)

    picky.event_kinds = frozenset({"hypercall"})
    m.listeners.append(lambda e: everything.append(e.kind))
    m.listeners.append(picky)
    assert m.run(max_insns=2_000_000) == "shutdown"
    assert set(some) == {"hypercall"}
    assert some.count("hypercall") == everything.count("hypercall") > 10
    assert everything.count("hypercall_entry") == everything.count("hypercall")
    assert "console" in everything


def test_routes_follow_changes_to_the_listeners(lab_machine):
    m = lab_machine("hello-pv64")
    seen = []
    assert m.route("hypercall") == ()
    m.listeners.append(seen.append)
    assert m.route("hypercall") == (seen.append,)
    m.listeners.remove(seen.append)
    assert m.route("hypercall") == ()
    m.listeners = [seen.append]                  # replacing the list works too
    m.dispatch(X.HYPERVISOR_xen_version, [X.XENVER_version, 0], 0)
    assert [e.kind for e in seen] == ["hypercall_entry", "hypercall"]


def test_unknown_and_unimplemented_calls_stay_visible(lab_machine):
    m = lab_machine("hello-pv32")
    events = []
    m.listeners.append(lambda e: events.append(e) if e.kind == "hypercall" else None)
    assert m.dispatch(11, [1, 2, 3], 0) == -38                 # no row at all
    assert m.dispatch(X.HYPERVISOR_platform_op, [5], 0) == -38  # a row without a handler
    assert [(e.data["name"], e.data["args"], e.data["error"]) for e in events] == [
        (hypercalls.name_of(11), [], "-ENOSYS"), ("platform_op", [5], "-ENOSYS")]
    assert m.stats.unimplemented["platform_op"] == 1


def test_a_replaced_row_takes_effect_on_a_built_machine(lab_machine, monkeypatch):
    m = lab_machine("hello-pv32")
    row = hypercalls.BY_NR[X.HYPERVISOR_xen_version]
    monkeypatch.setitem(hypercalls.BY_NR, row.nr,
                        dataclasses.replace(row, handler=lambda _m, cmd, arg: 1234))
    assert m.dispatch(X.HYPERVISOR_xen_version, [0, 0], 0) == 1234
    assert hypercalls.BY_NR[row.nr].rows[32].handler is not row.handler


def test_the_trace_writer_writes_what_json_dumps_writes():
    records = [
        ({"nr": 17, "name": "xen_version", "args": [0, 2**64 - 1], "arg_names": ("cmd", "arg"),
          "result": 0x40011, "error": None}),
        ({"nr": 99, "name": "hypercall_99", "args": [], "arg_names": (), "result": -38,
          "error": "-ENOSYS"}),
        ({"nr": 13, "name": 'odd%d"name', "args": [1, 2], "arg_names": ("a%s", "b"),
          "result": None, "error": None}),
        ({"nr": 13, "name": "twice", "args": [1, 2], "arg_names": ("a", "a"), "result": True,
          "error": None}),
        ({"nr": 13, "name": "fewer names", "args": [1, 2, 3], "arg_names": ("a", "b"),
          "result": 0, "error": None}),
        ({"nr": 13, "name": "ünïcode", "args": [1], "arg_names": ("a", "b"), "result": -22,
          "error": "-EINVAL"}),
    ]
    out = io.StringIO()
    writer = _TraceWriter(out)
    events = [Event("hypercall", 100 + i, d) for i, d in enumerate(records * 2)]
    for e in events:
        writer.write(e)
    assert out.getvalue() == "".join(json.dumps(_TraceWriter.record(e)) + "\n" for e in events)


def test_a_listener_may_ask_for_the_exit_events_of_some_calls_only(lab_machine):
    m = lab_machine("hello-pv64")
    some, everything = [], []

    def picky(event):
        some.append(event.data["name"])

    picky.event_kinds = frozenset({"hypercall:console_io"})
    m.listeners.append(picky)
    m.listeners.append(lambda e: everything.append(e) if e.kind == "hypercall" else None)
    assert m.run(max_insns=2_000_000) == "shutdown"
    names = [e.data["name"] for e in everything]
    assert set(some) == {"console_io"} and some.count("console_io") == names.count("console_io")
    assert len(set(names)) > 1 and m.route("hypercall_entry") == (m.listeners[1],)

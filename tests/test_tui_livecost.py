"""What the TUI costs a running guest (issue 7, "Live"): the hypercall log keeps the machine's events
and decodes only what it shows; a scroll view whose content grows repaints only the scrollbar that
changed."""

from __future__ import annotations

import asyncio

from textual.app import App, ComposeResult

from xendbg.machine.machine import Event
from xendbg.messages import HypercallRecord, HypercallsTraced
from xendbg.views import hypercall_log
from xendbg.views.hypercall_log import HypercallTable
from xendbg.views.lines import LineTable


def _event(i: int, name: str = "console_io", result: int = 0, multicall=None) -> Event:
    return Event("hypercall", 1000 + i, {
        "nr": 18, "name": name, "args": [1, 2 + i], "arg_names": ("cmd",), "ip": 0x4000 + i,
        "result": result, "error": None, "multicall": multicall})


def test_record_decodes_the_event_when_read():
    r = HypercallRecord(7, _event(3, "mmu_update", result=-22, multicall=4))
    assert (r.seq, r.insns, r.ip, r.name) == (7, 1003, 0x4003, "mmu_update")
    assert r.args == (("cmd", 1), ("arg1", 5))          # unnamed arguments get a number
    assert (r.result, r.error, r.multicall) == (-22, "-EINVAL", 4)
    ok = HypercallRecord(0, _event(0))
    assert ok.error is None and ok.multicall is None
    message = HypercallsTraced((_event(0), _event(1)), first_seq=40, dropped=2)
    assert [r.seq for r in message.records] == [40, 41] and message.dropped == 2


class _LogApp(App):
    def compose(self) -> ComposeResult:
        yield HypercallTable(id="t")


def test_hidden_log_makes_no_records_until_looked_at(monkeypatch):
    monkeypatch.setattr(hypercall_log, "KEEP", 100)
    asyncio.run(_hidden_log())


async def _hidden_log() -> None:
    app = _LogApp()
    async with app.run_test(size=(120, 20)) as pilot:
        table = app.query_one(HypercallTable)
        batches = [tuple(_event(i, result=-22 if i % 10 == 0 else 0) for i in range(b, b + 30))
                   for b in range(0, 300, 30)]
        for k, events in enumerate(batches):
            table.add(events, k * 30, draw=False)
        assert not table._records and not table._shown       # nothing decoded yet
        # Older batches that the log could not keep were let go unseen.
        assert table._pending_count < 100 + 30
        assert table.row_count() == 100                      # looked at: the last KEEP
        assert [r.seq for r in table.shown] == list(range(200, 300))
        assert table.errors_shown == 10
        table.redraw()
        await pilot.pause()
        assert table.cursor == 99                            # followed to the end
        table.set_filter("errors")
        assert [r.seq for r in table.shown] == list(range(200, 300, 10))
        table.add((_event(300, result=-22), _event(301)), 300)    # drawn: filtered now
        assert [r.seq for r in table.shown][-1] == 300 and table.errors_shown == 11


class _Wide(LineTable):
    columns = (("a", 60), ("b", 60))

    def __init__(self, **kw) -> None:
        super().__init__(**kw)
        self.rows = 50

    def row_count(self) -> int:
        return self.rows

    def row_cells(self, row: int):
        return [(str(row), None), ("x" * 70, None)]


class _WideApp(App):
    def compose(self) -> ComposeResult:
        yield _Wide(id="w")


def test_growing_rows_repaint_only_the_vertical_scrollbar():
    asyncio.run(_growing_rows())


async def _growing_rows() -> None:
    app = _WideApp()
    async with app.run_test(size=(80, 20)) as pilot:
        table = app.query_one(_Wide)
        table.rows_changed()
        await pilot.pause()
        assert table.show_horizontal_scrollbar and table.show_vertical_scrollbar
        refreshed = []
        for bar in (table.horizontal_scrollbar, table.vertical_scrollbar):
            original = bar.refresh
            bar.refresh = lambda *a, _b=bar, _o=original, **k: (refreshed.append(_b), _o(*a, **k))[1]
        table.rows = 80
        table.rows_changed()
        await pilot.pause()
        assert table.vertical_scrollbar in refreshed
        assert table.horizontal_scrollbar not in refreshed
        assert table.vertical_scrollbar.window_virtual_size == 81       # rows and the header
        assert table.max_scroll_y == 81 - table.scrollable_content_region.height


def test_the_session_builds_entry_events_only_while_something_can_stop_on_them(lab_machine):
    """Without a breakpoint or a hypercall step, nobody is given a hypercall's entry event (the
    machine builds none); a breakpoint or step-hypercall routes them again, at once."""
    from xendbg.debugger import Session, symbols_for_image
    m = lab_machine("hello-pv64")
    s = Session(m, symbols_for_image(m.image))
    assert m.route("hypercall_entry") == () and m.route("console")
    assert m.route_call("mmu_update") and m.route_call("console_io") == ()   # frame history
    assert s.execute("step-hypercall").ok                       # a step needs the entries
    assert s.at_entry is not None
    assert s.execute("finish-hypercall").ok
    assert m.route("hypercall_entry") == ()                     # done: not any more
    assert s.execute("break hypercall sched_op").ok
    assert m.route("hypercall_entry") and m.route("upcall")     # everything, for breakpoints
    assert m.route_call("console_io")
    stop = s.execute("continue")
    assert stop.ok and "sched_op" in stop.text
    assert s.execute("delete 1").ok
    assert m.route("hypercall_entry") == ()


def test_the_driver_numbers_calls_from_the_machine_count_and_says_what_it_dropped(lab_machine,
                                                                                    monkeypatch):
    """The driver takes the machine's hypercall events straight into a bounded deque; the
    sequence numbers and the dropped count come from the machine's own count of calls."""
    from xendbg.debugger import symbols_for_image
    from xendbg.views import driver as driver_module
    from xendbg.views.driver import Driver, Loaded
    monkeypatch.setattr(driver_module, "HYPERCALL_BUFFER", 8)
    m = lab_machine("hello-pv64")
    posted = []
    d = Driver(lambda: Loaded(m, symbols_for_image(m.image), "t"), posted.append)
    d._queue.put(("run_for", 10_000_000))
    d.close = lambda: None
    d._queue.put(driver_module._STOP)
    d.serve()
    flat = [x for p in posted for x in getattr(p, "messages", (p,))]
    (traced,) = [x for x in flat if isinstance(x, HypercallsTraced)]
    made = sum(m.stats.calls.values())
    assert made > 8 and len(traced.events) == 8
    assert traced.first_seq == made - 8 and traced.dropped == made - 8
    assert [r.seq for r in traced.records] == list(range(made - 8, made))
    assert all(e.kind == "hypercall" for e in traced.events)


def test_resuming_from_an_entry_stop_takes_the_entries_only_until_it_is_skipped(lab_machine):
    """After a stop at a hypercall's entry the session takes every event until that entry comes
    again (to skip it once); from then on, for the rest of the run, no entry event is built."""
    from xendbg.debugger import Session, symbols_for_image
    m = lab_machine("hello-pv64")
    s = Session(m, symbols_for_image(m.image))
    assert s.execute("step-hypercall").ok and s.at_entry is not None
    built = []

    def probe(_event):
        built.append(bool(m.route("hypercall_entry")))

    probe.event_kinds = frozenset({"hypercall"})
    m.listeners.append(probe)
    assert s.execute("continue").ok
    assert len(built) > 10 and not any(built)

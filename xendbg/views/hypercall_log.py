"""Hypercall log: every call the guest made, decoded (name, named arguments, result), errors
highlighted, filterable by name. Line API and a bounded history: it grows while the guest runs.

Filter: names separated by spaces or commas (``mmu_update, event_channel_op``), a prefix with a
``*`` (``evtchn*``), ``!name`` to hide one, and ``errors`` for failed calls only.
"""

from __future__ import annotations

from collections import deque

from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import Input

from xendbg.messages import HypercallRecord
from xendbg.views.fmt import result_text
from xendbg.views.lines import Cell, LineTable, TextLine

KEEP = 50_000


class CallFilter:
    def __init__(self, text: str = "") -> None:
        words = [w for w in text.replace(",", " ").split() if w]
        self.errors = "errors" in words
        words = [w for w in words if w != "errors"]
        self.hide = {w[1:] for w in words if w.startswith("!")}
        self.show = [w for w in words if not w.startswith("!")]
        self.text = text

    def __call__(self, r: HypercallRecord) -> bool:
        if self.errors and r.error is None:
            return False
        if r.name in self.hide:
            return False
        if not self.show:
            return True
        return any(r.name == w or (w.endswith("*") and r.name.startswith(w[:-1]))
                   for w in self.show)


class HypercallTable(LineTable):
    """The log's table. Calls arrive as the machine's events (:class:`HypercallsTraced`); they
    become records and go through the filter only when the table is looked at (drawn, counted,
    filtered), so a log on a hidden tab costs the UI thread a list append per batch."""

    columns = (("#", 7), ("insns", 11), ("call", 22), ("arguments", 58), ("result", 14))

    def __init__(self, **kw) -> None:
        super().__init__(**kw)
        self._records: deque[HypercallRecord] = deque(maxlen=KEEP)
        self._shown: list[HypercallRecord] = []
        self._pending: deque[tuple[int, tuple]] = deque()    # (first seq, events) not yet kept
        self._pending_count = 0
        self.filter = CallFilter()
        self.dropped = 0
        self.errors_shown = 0
        self.follow = True
        self._stale_at_end: bool | None = None    # records wait to be drawn (see add)

    @property
    def records(self) -> deque[HypercallRecord]:
        """The calls kept (the last :data:`KEEP`), oldest first."""
        self._take_pending()
        return self._records

    @property
    def shown(self) -> list[HypercallRecord]:
        """The kept calls that pass the filter: the table's rows."""
        self._take_pending()
        return self._shown

    def row_count(self) -> int:
        return len(self.shown)

    def row_cells(self, row: int) -> list[Cell]:
        r = self.shown[row]
        error = r.error
        style = "line-table--error" if error is not None else None
        multicall = r.multicall
        name = r.name if multicall is None else f"  [{multicall}] {r.name}"
        args = ", ".join(f"{k}={v:#x}" for k, v in r.args)
        return [(str(r.seq), "line-table--dim"), (str(r.insns), "line-table--dim"), (name, style),
                (args, None), (result_text(r.result), style)]

    def add(self, events: tuple, first_seq: int, dropped: int = 0, draw: bool = True) -> None:
        """Add the machine's ``hypercall`` events, numbered from ``first_seq``; with
        ``draw=False`` (the log is not on screen) they are only kept, and drawn by
        :meth:`redraw` — a hidden widget asking for a repaint makes Textual rebuild its whole map
        of the screen, several times a second while the guest runs."""
        self.dropped += dropped
        if self._stale_at_end is None:          # the first batch since the table was drawn
            shown = self.shown
            self._stale_at_end = not shown or self.cursor >= len(shown) - 1
        if events:
            self._pending.append((first_seq, events))
            self._pending_count += len(events)
            # Only the last KEEP are kept: older batches need never become records.
            while self._pending_count - len(self._pending[0][1]) >= KEEP:
                self._pending_count -= len(self._pending.popleft()[1])
        if draw:
            self.redraw()

    def _take_pending(self) -> None:
        """Make records of the events that arrived since, and filter them."""
        if not self._pending:
            return
        pending, self._pending, self._pending_count = self._pending, deque(), 0
        keep, shown, accept = self._records, self._shown, self.filter
        errors = 0
        for first, events in pending:
            for i, e in enumerate(events):
                r = HypercallRecord(first + i, e)
                keep.append(r)
                if accept(r):
                    shown.append(r)
                    errors += r.error is not None
        self.errors_shown += errors
        if len(shown) > KEEP:
            cut = len(shown) - KEEP
            self.errors_shown -= sum(1 for r in shown[:cut] if r.error is not None)
            del shown[:cut]
            self.set_reactive(HypercallTable.cursor, max(0, self.cursor - cut))

    def redraw(self) -> None:
        """Draw what :meth:`add` kept (nothing to do if it drew it already)."""
        if self._stale_at_end is None:
            return
        at_end, self._stale_at_end = self._stale_at_end, None
        self.rows_changed()
        if self.follow and at_end and self.shown:
            self.move_cursor(len(self.shown) - 1)

    def set_filter(self, text: str) -> None:
        self._take_pending()
        self._stale_at_end = None
        self.filter = CallFilter(text)
        self._shown = [r for r in self._records if self.filter(r)]
        self.errors_shown = sum(1 for r in self._shown if r.error is not None)
        self.rows_changed()
        if self._shown:
            self.move_cursor(len(self._shown) - 1)


class HypercallLogView(Vertical):
    def compose(self) -> ComposeResult:
        yield Input(placeholder="filter: names (mmu_update, evtchn*), !name, errors",
                    id="hypercall-filter")
        yield TextLine("", id="hypercall-summary")
        yield HypercallTable(id="hypercall-table")

    def add(self, events: tuple, first_seq: int, dropped: int = 0, draw: bool = True) -> None:
        """Add calls (see :meth:`HypercallTable.add`); ``draw=False`` while the log is not on
        screen (see :meth:`redraw`)."""
        self.query_one(HypercallTable).add(events, first_seq, dropped, draw)
        if draw:
            self._summary()

    def redraw(self) -> None:
        """Draw the records added while the log was not on screen."""
        self.query_one(HypercallTable).redraw()
        self._summary()

    def _summary(self) -> None:
        table = self.query_one(HypercallTable)
        text = f"{len(table.shown)} shown of {len(table.records)} kept, {table.errors_shown} " \
               "errors shown"
        if table.dropped:
            text += f"; {table.dropped} not kept (the guest made them faster than shown)"
        self.query_one("#hypercall-summary", TextLine).set(text)

    def on_input_changed(self, event: Input.Changed) -> None:
        event.stop()
        self.query_one(HypercallTable).set_filter(event.value)
        self._summary()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self.query_one(HypercallTable).focus()

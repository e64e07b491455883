"""The TUI's one adapter to the machine: it owns the emulator thread and the debugger session.

Only this object touches the :class:`~xendbg.machine.machine.Machine` and the
:class:`~xendbg.debugger.Session`, and only from one thread — the worker the screen starts with
:meth:`Driver.serve`. The UI thread calls the thread-safe entry points (:meth:`submit`,
:meth:`pause`, :meth:`console_input`, :meth:`set_view`, :meth:`close`), which queue work or set a
flag; results come back as messages (:mod:`xendbg.messages`) through ``post``.

How the guest runs: a run-control command (``continue``, ``stepi``, ``step-hypercall`` …) is
executed by the session as in ``xendbg run --script``. While it runs, the machine emits a ``tick``
event every ``Machine.tick_interval`` instructions, an interval the driver adapts to the guest's
speed (a hypercall-heavy guest runs 0.1 M instructions a second, a tight loop 1000 M) so that
ticks come about :data:`TICKS_PER_SECOND` times a second; on a tick — on the
emulator thread, between two blocks, where the state is consistent — the driver takes a snapshot
at most every :data:`REFRESH_SECONDS`, flushes the console text and hypercall records collected
since the last one, and runs queued requests that are safe while running (console input, commands
that do not run the guest, such as ``break``). When the command returns, the stop is published
with an exact snapshot. A pause from the UI goes straight to the session (thread-safe).
"""

from __future__ import annotations

import dataclasses
import functools
import queue
import re
import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from textual.message import Message

from xendbg.machine.snapshot import MachineSnapshot, snapshot
from xendbg.messages import (
    BreakpointInfo,
    CommandFinished,
    ConsoleOutput,
    GuestSpeed,
    HypercallsTraced,
    LoadFailed,
    MachineLoaded,
    RunStateChanged,
    SessionView,
    SnapshotReady,
    View,
)

TICKS_PER_SECOND = 20          # the tick interval adapts to the guest's speed to give about this
TICK_MIN, TICK_MAX = 5_000, 50_000_000      # … within these bounds (instructions)
TICK_FIRST = 100_000
# Live snapshots at most this often (2 a second). Each costs the UI thread a screen's worth of
# drawing (~30 ms) during which a hypercall-heavy guest all but stops: its hooks need the GIL.
REFRESH_SECONDS = 1 / 2
MAX_BACKLOG = 4                # skip a live refresh while the UI has this many messages queued
SWITCH_INTERVAL = 0.001        # the GIL's switch interval while the guest runs (see _run_control)
HYPERCALL_BUFFER = 4096        # records kept between two flushes (older ones are counted, dropped)
_HEX = re.compile(r"0x[0-9a-fA-F]+")
_STOP = object()


class Batch(Message):
    """Messages the screen applies together and draws once: a live refresh (console text,
    hypercalls, speed, the view) or a stop (the command's output, the new run state, the view).
    Posted one by one, each would be drawn by itself — the screen twice or more per refresh,
    and a stop reaching the screen a draw later."""

    def __init__(self, messages: tuple[Message, ...]) -> None:
        super().__init__()
        self.messages = messages


@dataclass
class Loaded:
    machine: object
    symbols: object
    title: str
    detail: str = ""


def loader(opts, symbols_file: str | None = None) -> Callable[[], Loaded]:
    """A ``load`` for :class:`Driver`: build the machine for ``opts`` (a
    :class:`~xendbg.runner.RunOptions`) with the guest's symbols, on the emulator thread."""

    def load() -> Loaded:
        from xendbg.debugger import symbols_for_image
        from xendbg.runner import load as load_machine
        machine, image, path = load_machine(opts)
        symbols = symbols_for_image(image, symbols_file)
        return Loaded(machine, symbols, path.name,
                      f"{image.abi}, {machine.domain.nr_pages} pages, {len(symbols)} symbols")

    return load


def _without_frames(snap: MachineSnapshot | None) -> MachineSnapshot | None:
    if snap is None or snap.frames is None:
        return snap
    return dataclasses.replace(snap, frames=None)


class Driver:
    """Run a machine and its session for the TUI (see the module docstring).

    ``load()`` builds the machine (it may take a while: it runs on the emulator thread) and returns
    a :class:`Loaded`, or raises an exception whose ``str()`` is the one-line reason.
    ``post(message)`` must be thread-safe (``App.post_message``); ``backlog()`` says how many
    messages the UI has not handled yet (back-pressure for live snapshots).
    """

    def __init__(self, load: Callable[[], Loaded], post: Callable[[Message], object], *,
                 backlog: Callable[[], int] = lambda: 0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._load = load
        self._post = post
        self._backlog = backlog
        self._clock = clock
        self.m = None
        self.session = None
        self.running = False                 # a run-control command is executing
        self.ready = threading.Event()       # the machine is built (or failed to be)
        self.load_error: str | None = None
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._deferred: deque = deque()
        self._want: dict = {"frames": False, "walk_va": None, "memory_at": None,
                            "frame_mfn": None}
        self._console: list = []              # the machine's console events since the flush
        self._calls: deque = deque(maxlen=HYPERCALL_BUFFER)
        self._calls_base = 0                  # the machine's hypercall count when we subscribed
        self._calls_flushed = 0
        self._last_refresh = 0.0
        self._run_start = (0.0, 0)
        self._speed_mark = (0.0, 0)
        self._tick_interval = TICK_FIRST
        self._last_tick = 0.0
        self._live_posted = 0                # live views posted / shown: one in flight at most
        self._live_shown = 0
        self.thread_id: int | None = None     # the emulator thread (benchmarks read its CPU time)
        self.internal_errors: list[str] = []  # tracebacks of the driver's own bugs (tests check)
        self._live_ok = True
        self._refresh_queued = False
        self.last_stop_snapshot: MachineSnapshot | None = None
        self._stop_before: MachineSnapshot | None = None    # the baseline of the last stop's view
        self.closed = False

    # -- called from the UI thread ----------------------------------------------------------------
    def submit(self, line: str) -> None:
        """Run a command line of the debugger's language (``help`` lists them)."""
        line = line.strip()
        if not line:
            return
        if self.load_error is not None:
            self._post(CommandFinished(line, False, f"no guest: {self.load_error}"))
            return
        if line.split()[0] == "pause":
            self.pause()
            self._post(CommandFinished(line, True, "pause requested"))
            return
        self._queue.put(("command", line))

    def pause(self) -> None:
        """Stop the running guest at the next block boundary (nothing happens if it is stopped)."""
        if self.session is not None and self.running:
            self.session.pause()

    def console_input(self, data: bytes) -> None:
        """Bytes typed into the console panel: the guest reads them from its console ring."""
        self._queue.put(("call", lambda: self.m.console.queue_input(data)))

    def set_view(self, **want) -> None:
        """What the next snapshots should include besides the basics: ``frames`` (bool),
        ``walk_va`` (int), ``memory_at`` ((address, "va"|"ma")), ``frame_mfn`` (int)."""
        self._want = {**self._want, **want}
        if not self.running:
            self.refresh()

    def refresh(self) -> None:
        """Publish the current stop again (with what :meth:`set_view` asked for). Requests that
        arrive before the emulator thread gets to it make one refresh (holding a cursor key down
        does not queue a snapshot per row)."""
        if not self._refresh_queued:
            self._refresh_queued = True
            self._queue.put(("refresh", None))

    def shown(self) -> None:
        """The UI has drawn the last live view: the next may be sent. A UI slower than the guest
        thus gets fewer refreshes instead of a growing queue (and a pause that waits for it)."""
        self._live_shown = self._live_posted

    def show_address(self, what: str, text: str) -> None:
        """Point the page walk (``what="walk"``) or the memory view (``"memory"``) at an address
        expression (numbers, registers, symbols; ``ma:``/``mfn:``/``pfn:`` for machine memory),
        evaluated on the emulator thread with the session's symbols."""
        self._queue.put(("address", (what, text)))

    def symbols_matching(self, prefix: str, limit: int = 50) -> list[str]:
        """The guest's symbol names starting with ``prefix`` (for completion). The symbol table
        does not change once loaded, so the UI thread may ask."""
        if not prefix or self.session is None:
            return []
        return self.session.symbols.matching(prefix, limit)

    def run_for(self, insns: int) -> None:
        """Run the guest for ``insns`` instructions (or until it stops), without live refresh: a
        fixed budget and no ticks give a stop that is the same from run to run (the snapshot tests
        use it), whatever the host's speed."""
        self._queue.put(("run_for", insns))

    def close(self) -> None:
        """Stop the guest and end :meth:`serve`."""
        self.closed = True
        if self.session is not None:
            self.session.pause()
        self._queue.put(_STOP)

    @property
    def live_views(self) -> int:
        """Live views posted so far (benchmarks count them)."""
        return self._live_posted

    def emulator_cpu_seconds(self) -> float:
        """CPU time the emulator thread has used so far."""
        if self.thread_id is None:
            return 0.0
        return time.clock_gettime(time.pthread_getcpuclockid(self.thread_id))

    # -- the emulator thread ----------------------------------------------------------------------
    def serve(self) -> None:
        """The emulator thread's loop: load, publish the first stop, then execute requests."""
        self.thread_id = threading.get_ident()
        try:
            loaded = self._load()
        except Exception as exc:                  # noqa: BLE001 - any failure is shown, one line
            self.load_error = str(exc) or type(exc).__name__
            self.ready.set()
            self._post(LoadFailed(self.load_error))
            return
        from xendbg.debugger import Session
        self.m = loaded.machine
        self.session = Session(self.m, loaded.symbols)
        self._subscribe()
        self.ready.set()
        self._post_with_view([MachineLoaded(loaded.title, loaded.detail)], "stop")
        while True:
            item = self._deferred.popleft() if self._deferred else self._queue.get()
            if item is _STOP:
                return
            try:
                self._handle(item)
            except Exception as exc:              # noqa: BLE001 - a TUI bug must not end the loop
                self.running = False
                self._internal_error(f"{item[0]} {item[1]!r}", exc)
            if self.closed:
                return

    def _internal_error(self, where: str, exc: Exception) -> None:
        self.internal_errors.append(traceback.format_exc())
        self._post(CommandFinished(where, False, f"xendbg internal error in the TUI ({where}): "
                                                 f"{type(exc).__name__}: {exc}"))

    def _handle(self, item) -> None:
        kind, arg = item
        if kind == "command":
            self._command(arg)
        elif kind == "run_for":
            self._run_control(f"run {arg} instructions",
                              lambda: self._stop_result(self.session.resume(arg)), live=False)
        elif kind == "call":
            arg()
            self._post_all(self._flush_streams())
        elif kind == "refresh":
            self._refresh_queued = False
            self._post(self._publish("refresh"))
        elif kind == "address":
            if self._set_address(*arg):
                self._post(self._publish("refresh"))

    def _command(self, line: str) -> None:
        from xendbg.debugger.commands import lookup
        cmd = lookup(line.split()[0])
        if cmd is not None and cmd.runs_guest:
            self._run_control(line, lambda: self.session.execute(line))
            return
        result = self.session.execute(line)
        self._post_with_view([*self._flush_streams(), CommandFinished(line, result.ok, result.text)],
                             "refresh")

    @staticmethod
    def _stop_result(stop):
        """A :class:`CommandResult` for a run the driver started itself (``run_for``)."""
        from xendbg.debugger import CommandResult
        return CommandResult(True, stop.text, {"reason": stop.reason, "ip": stop.ip, **stop.data},
                             stop)

    def _run_control(self, line: str, execute: Callable[[], object], live: bool = True) -> None:
        m = self.m
        now = self._clock()
        self.running = True
        self._run_start = self._speed_mark = (now, m.insns)
        self._last_refresh = self._last_tick = now
        self._post(RunStateChanged(True, line))
        m.tick_interval = self._tick_interval if live else 0
        # While the guest runs, this thread holds the GIL nearly all the time; the UI thread waits
        # up to the switch interval (5 ms) each time it wants it back, several times per key or
        # message. A shorter interval costs the guest nothing while the UI thread is idle.
        switch = sys.getswitchinterval()
        sys.setswitchinterval(min(switch, SWITCH_INTERVAL))
        try:
            result = execute()
        finally:
            sys.setswitchinterval(switch)
            m.tick_interval = 0
            self.running = False
        t0, i0 = self._run_start
        wall = self._clock() - t0
        mips = (m.insns - i0) / wall / 1e6 if wall > 0 else None
        stop = result.stop
        self._post_with_view([*self._flush_streams(), CommandFinished(line, result.ok, result.text),
                              RunStateChanged(False, line, stop.reason if stop is not None else None,
                                              stop.text if stop is not None else result.text, mips)],
                             "stop")

    # -- machine events (emulator thread) -----------------------------------------------------------
    def _subscribe(self) -> None:
        """Listen for what the screen streams, and nothing else (the machine builds no other
        event for the driver). A hypercall-heavy guest makes tens of thousands of hypercall and
        console events a second: they go straight into a deque and a list — C calls, no Python
        frame per event — as the machine's events, kept as they are (the log decodes only the
        rows it shows). How many calls were made comes from the machine's own count."""
        m = self.m

        def listen(fn, *kinds) -> None:
            listener = functools.partial(fn)
            listener.event_kinds = frozenset(kinds)
            m.listeners.append(listener)

        self._calls_base = self._hypercalls_made()
        listen(self._calls.append, "hypercall")
        listen(self._console.append, "console")
        listen(self._on_tick, "tick")

    def _hypercalls_made(self) -> int:
        # Every dispatched call (multicall entries too) is counted once in the machine's stats,
        # just before its ``hypercall`` event.
        return sum(self.m.stats.calls.values())

    def _on_tick(self, _event) -> None:
        if self._live_ok:
            # Called by the machine between two blocks: a bug in the live refresh must not crash
            # the domain; it turns the live refresh off and says why (stops still show).
            try:
                self._tick()
            except Exception as exc:              # noqa: BLE001
                self._live_ok = False
                self._internal_error("the live refresh", exc)

    def _tick(self) -> None:
        now = self._clock()
        elapsed = now - self._last_tick
        self._last_tick = now
        if elapsed > 0:
            # Aim at TICKS_PER_SECOND, half-way from the current interval (no oscillation).
            ideal = self.m.tick_interval / (elapsed * TICKS_PER_SECOND)
            interval = int(min(TICK_MAX, max(TICK_MIN, (self.m.tick_interval + ideal) / 2)))
            self.m.tick_interval = self._tick_interval = interval
        if now - self._last_refresh < REFRESH_SECONDS:
            return
        self._run_queued_while_running()
        if self._live_shown < self._live_posted or self._backlog() >= MAX_BACKLOG:
            return                      # the UI is behind: keep the streams for the next tick
        self._last_refresh = now
        out = self._flush_streams()
        t, i = self._speed_mark
        insns = self.m.insns
        if now > t:
            out.append(GuestSpeed((insns - i) / (now - t) / 1e6, insns))
        self._speed_mark = (now, insns)
        self._live_posted += 1
        self._post_with_view(out, "live")

    def _run_queued_while_running(self) -> None:
        """Requests that arrived while the guest runs: what is safe between two blocks runs now;
        a command that would run the guest waits for the current one to finish."""
        from xendbg.debugger.commands import lookup
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return
            if item is _STOP:
                self._deferred.append(item)
                continue
            kind, arg = item
            if kind == "command":
                cmd = lookup(arg.split()[0])
                if cmd is not None and cmd.runs_guest:
                    self._deferred.append(item)
                    continue
                result = self.session.execute(arg)
                self._post(CommandFinished(arg, result.ok, result.text))
            elif kind == "call":
                arg()
            elif kind == "run_for":
                self._deferred.append(item)
            elif kind == "address":
                self._set_address(*arg)
            # "refresh": the live snapshot that follows serves it

    def _set_address(self, what: str, text: str) -> bool:
        from xendbg.debugger.memview import DebugError, parse_address
        try:
            addr = parse_address(self.m, self.session.symbols, text)
        except DebugError as exc:
            self._post(CommandFinished(f"{what} {text}", False, str(exc)))
            return False
        if what == "walk":
            if addr.space != "va":
                self._post(CommandFinished(f"walk {text}", False,
                                           "a page walk needs a guest-virtual address"))
                return False
            self._want = {**self._want, "walk_va": addr.value}
        else:
            self._want = {**self._want, "memory_at": (addr.value, addr.space)}
        return True

    def _post_all(self, messages: list[Message]) -> None:
        """Post ``messages`` as one (:class:`Batch`) when there are several."""
        if len(messages) == 1:
            self._post(messages[0])
        elif messages:
            self._post(Batch(tuple(messages)))

    def _post_with_view(self, messages: list[Message], kind: str) -> None:
        """Post ``messages`` with a view of the machine, as one; if taking the view fails (a bug
        in the TUI), the messages still go (the screen must learn the guest stopped)."""
        try:
            messages.append(self._publish(kind))
        finally:
            self._post_all(messages)

    def _flush_streams(self) -> list[Message]:
        """The console text and hypercall records collected since the last flush, as messages
        (the caller posts them, with what goes with them)."""
        out: list[Message] = []
        if self._console:
            data = b"".join(e.data["data"] for e in self._console)
            self._console.clear()
            out.append(ConsoleOutput(data.decode("utf-8", "replace")))
        if self._calls:
            events = tuple(self._calls)
            self._calls.clear()
            seen = self._hypercalls_made() - self._calls_base
            first = seen - len(events)                   # the buffer keeps the latest ones
            dropped = first - self._calls_flushed
            self._calls_flushed = seen
            out.append(HypercallsTraced(events, first, dropped))
        return out

    # -- snapshots ------------------------------------------------------------------------------------
    def _publish(self, kind: str) -> SnapshotReady:
        """A view to post: ``stop`` (after the guest ran: the new baseline for highlights),
        ``refresh`` (same state, other things asked for), ``live`` (while running)."""
        m, s = self.m, self.session
        live = kind == "live"
        want = self._want
        hint = None
        found = s.symbols.lookup(m.cpu.ip)
        if found is not None:
            hint = found[0].address
        snap = snapshot(m, code_hint=hint, frames=bool(want["frames"]) or not live,
                        walk_va=want["walk_va"], memory_at=want["memory_at"],
                        frame_mfn=want["frame_mfn"])
        if kind == "stop":
            self._stop_before = self.last_stop_snapshot
            self.last_stop_snapshot = snap
        before = self._stop_before if kind != "live" else self.last_stop_snapshot
        session = self._session_view(snap, exact=not live)
        if not want["frames"]:
            # A stop keeps the frame table here, as the baseline of the next stop's highlights;
            # the screen gets it when a frame panel is shown (with both tables: the highlights
            # are exact). Sent at every stop, the two tables were most of a stop's bytes.
            snap = _without_frames(snap)
            before = _without_frames(before)
        return SnapshotReady(View(snap, session, before, kind))

    def _session_view(self, snap: MachineSnapshot, exact: bool) -> SessionView:
        s = self.session
        backtrace: tuple[int, ...] = ()
        irqs: dict[int, int] = {}
        at_entry = at_entry_name = None
        history: tuple[str, ...] = ()
        finished: tuple = ()
        if exact:
            # Through the command language (not its modules' functions): what `backtrace` and
            # `info irq` answer is what the panels show. run_command keeps them out of the
            # user's history.
            from xendbg.debugger.commands import run_command
            result = run_command(s, "backtrace")
            if result.ok and isinstance(result.data, dict):
                backtrace = tuple(result.data.get("frames", ()))
            result = run_command(s, "info irq")
            if result.ok and isinstance(result.data, dict):
                irqs = {k: v for k, v in result.data.items()
                        if isinstance(k, int) and isinstance(v, int)}
            if s.at_entry is not None:
                from xendbg.debugger.decode import describe_call
                d = s.at_entry
                decoded = describe_call(self.m, d["name"], dict(zip(d["arg_names"], d["args"],
                                                                    strict=False)))
                at_entry = tuple(decoded.text().splitlines())
                at_entry_name = d["name"]
            mfn = self._want["frame_mfn"]
            if mfn is not None:
                history = tuple(s.frame_history.get(mfn, [])[-40:])
            stop = s.last_stop
            if stop is not None and stop.data.get("entries"):
                finished = tuple((e["multicall"], e["name"], e["result"])
                                 for e in stop.data["entries"])
        addresses = set(backtrace)
        for insn in snap.code.insns:
            addresses.add(insn.address)
            addresses.update(int(h, 16) for h in _HEX.findall(insn.op_str))
        addresses.update(v for _a, v in snap.stack.words if v is not None)
        addresses.update(v for _n, v in snap.registers)
        labels = {}
        for a in addresses:
            name = s.symbols.name_of(a)
            if name is not None:
                labels[a] = name
        bps = tuple(BreakpointInfo(b.number, b.kind, b.enabled, b.hits, b.address, b.describe())
                    for b in s.breakpoints.listed())
        stop = s.last_stop
        return SessionView(labels=labels, breakpoints=bps, at_entry=at_entry,
                           at_entry_name=at_entry_name,
                           last_stop=stop.reason if stop is not None else None,
                           last_stop_text=stop.text if stop is not None else "",
                           backtrace=backtrace, irqs=irqs, frame_history=history,
                           finished_entries=finished)


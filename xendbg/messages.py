"""Messages from the emulator's thread to the TUI, and the plain data they carry.

The emulator runs in one worker thread (:mod:`xendbg.views.driver`); it never touches a widget.
It posts these messages (``post_message`` is thread-safe) and the screen hands their data down to
the panels. Payloads are frozen dataclasses or tuples (or read-only views, as
:class:`HypercallRecord`), so a panel can keep one without copying.

High-rate producers are coalesced: live snapshots replace each other in the queue
(:meth:`SnapshotReady.can_replace`), console text and hypercall records are batched per refresh.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from textual.message import Message

from xendbg.machine.abi.errno import errno_name
from xendbg.machine.snapshot import MachineSnapshot


class HypercallRecord:
    """One hypercall as the log shows it (after Xen ran it): a read-only view of the machine's
    ``hypercall`` event, decoded when a field is read.

    A hypercall-heavy guest makes tens of thousands of calls a second. The emulator thread keeps
    the machine's events as they come (no object of its own per call: its time is the guest's),
    and the log makes a record only for the calls it keeps and decodes only the rows it draws.
    The event's data is never changed after the machine emitted it."""

    __slots__ = ("seq", "_event")

    def __init__(self, seq: int, event) -> None:
        self.seq = seq
        self._event = event

    @property
    def insns(self) -> int:
        return self._event.insns

    @property
    def ip(self) -> int:
        return self._event.data.get("ip", 0)

    @property
    def name(self) -> str:
        return self._event.data["name"]

    @property
    def args(self) -> tuple[tuple[str, int], ...]:
        d = self._event.data
        names = d.get("arg_names") or ()
        return tuple((names[i] if i < len(names) else f"arg{i}", v)
                     for i, v in enumerate(d["args"]))

    @property
    def result(self) -> int | None:
        return self._event.data.get("result")

    @property
    def error(self) -> str | None:
        """The errno name when the result is an error."""
        d = self._event.data
        error = d.get("error")
        result = d.get("result")
        if error is None and isinstance(result, int) and -4096 < result < 0:
            error = errno_name(result)
        return error

    @property
    def multicall(self) -> int | None:
        """The entry index inside a batch."""
        return self._event.data.get("multicall")

    def __repr__(self) -> str:
        return f"HypercallRecord(#{self.seq} {self.name} -> {self.result})"


@dataclass(frozen=True)
class BreakpointInfo:
    number: int
    kind: str
    enabled: bool
    hits: int
    address: int | None
    what: str


@dataclass(frozen=True, eq=False)
class SessionView:
    """What the debugger session knows that the machine does not: symbols for the addresses on
    screen, breakpoints, the call the guest is stopped before, the last stop, a backtrace."""

    labels: dict[int, str] = field(default_factory=dict)    # address → symbol+off
    breakpoints: tuple[BreakpointInfo, ...] = ()
    at_entry: tuple[str, ...] | None = None        # the decoded call, line by line
    at_entry_name: str | None = None
    last_stop: str | None = None                   # its reason
    last_stop_text: str = ""
    backtrace: tuple[int, ...] = ()
    irqs: dict[int, int] = field(default_factory=dict)      # port → the guest's IRQ (Linux)
    frame_history: tuple[str, ...] = ()            # the debugger's history of the selected frame
    finished_entries: tuple[tuple[int, str, int | None], ...] = ()   # last finish-hypercall batch

    @property
    def breakpoint_addresses(self) -> frozenset[int]:
        return frozenset(b.address for b in self.breakpoints
                         if b.kind == "code" and b.address is not None and b.enabled)

    def label(self, address: int) -> str | None:
        return self.labels.get(address)


@dataclass(frozen=True, eq=False)
class View:
    """Everything a panel renders: a snapshot, what the session adds, and the snapshot of the
    previous stop (to highlight what changed since)."""

    snap: MachineSnapshot
    session: SessionView
    before: MachineSnapshot | None = None
    kind: str = "stop"      # "stop" (the guest stopped), "refresh" (the same stop, more asked
    #                         for), "live" (taken while the guest runs)

    @property
    def live(self) -> bool:
        return self.kind == "live"


class SnapshotReady(Message):
    """A new view of the machine. Live ones may replace each other; a stop's never is."""

    def __init__(self, view: View) -> None:
        super().__init__()
        self.view = view

    def can_replace(self, message: Message) -> bool:
        return self.view.live and isinstance(message, SnapshotReady) and message.view.live


class ConsoleOutput(Message):
    """Guest console text (everything printed since the last one)."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text


class HypercallsTraced(Message):
    """Hypercalls made since the last batch, oldest first: the machine's ``hypercall`` events as
    they came, numbered from ``first_seq`` (see :class:`HypercallRecord`)."""

    def __init__(self, events: tuple, first_seq: int, dropped: int = 0) -> None:
        super().__init__()
        self.events = events
        self.first_seq = first_seq
        self.dropped = dropped          # records not kept (the producer's buffer overflowed)

    @property
    def records(self) -> tuple[HypercallRecord, ...]:
        return tuple(HypercallRecord(self.first_seq + i, e) for i, e in enumerate(self.events))


class RunStateChanged(Message):
    """The guest started running (``running``) or stopped (with the stop's reason and text)."""

    def __init__(self, running: bool, command: str = "", reason: str | None = None,
                 text: str = "", mips: float | None = None) -> None:
        super().__init__()
        self.running = running
        self.command = command
        self.reason = reason
        self.text = text
        self.mips = mips


class CommandFinished(Message):
    """A command line finished: its output for the command log."""

    def __init__(self, line: str, ok: bool, text: str) -> None:
        super().__init__()
        self.line = line
        self.ok = ok
        self.text = text


class GuestSpeed(Message):
    """Instructions per second measured over the last refresh period while running."""

    def __init__(self, mips: float, insns: int) -> None:
        super().__init__()
        self.mips = mips
        self.insns = insns

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, GuestSpeed)


class MachineLoaded(Message):
    """The guest image is loaded and the domain built; ``title`` names it."""

    def __init__(self, title: str, detail: str = "") -> None:
        super().__init__()
        self.title = title
        self.detail = detail


class LoadFailed(Message):
    """The guest could not be loaded (a bad file, an unknown name): the reason, one line."""

    def __init__(self, reason: str) -> None:
        super().__init__()
        self.reason = reason

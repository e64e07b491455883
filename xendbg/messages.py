"""Messages from the emulator's thread to the TUI, and the plain data they carry.

The emulator runs in one worker thread (:mod:`xendbg.views.driver`); it never touches a widget.
It posts these messages (``post_message`` is thread-safe) and the screen hands their data down to
the panels. Payloads are frozen dataclasses or tuples, so a panel can keep one without copying.

High-rate producers are coalesced: live snapshots replace each other in the queue
(:meth:`SnapshotReady.can_replace`), console text and hypercall records are batched per refresh.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from textual.message import Message

from xendbg.machine.snapshot import MachineSnapshot


@dataclass(frozen=True)
class HypercallRecord:
    """One hypercall as the log shows it (after Xen ran it)."""

    seq: int
    insns: int
    ip: int
    name: str
    args: tuple[tuple[str, int], ...]
    result: int | None
    error: str | None               # errno name when the result is an error
    multicall: int | None           # entry index inside a batch


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
    """Hypercalls made since the last batch, oldest first."""

    def __init__(self, records: tuple[HypercallRecord, ...], dropped: int = 0) -> None:
        super().__init__()
        self.records = records
        self.dropped = dropped          # records not kept (the producer's buffer overflowed)


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

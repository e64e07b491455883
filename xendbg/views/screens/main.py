"""The debugger's main screen: code, registers and stack on the left, the Xen panels on the right,
the console / hypercall log / command output below, the command line and the key bindings.

The screen is the only part of the UI that talks to the machine, and only through its driver —
an :class:`~xendbg.views.engine.EngineProcess` (the machine in a process of its own) or, in
process, a :class:`~xendbg.views.driver.Driver`; both have the same interface. It starts the
driver from a worker thread, forwards what the user asks for, and hands each
:class:`~xendbg.messages.View` down to the panels that are on screen.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import Screen
from textual.widgets import Footer, RichLog, TabbedContent, TabPane

from xendbg.messages import (
    CommandFinished,
    ConsoleOutput,
    GuestSpeed,
    HypercallsTraced,
    LoadFailed,
    MachineLoaded,
    RunStateChanged,
    SnapshotReady,
    View,
)
from xendbg.views.code import CodeView
from xendbg.views.command_line import CommandLine, completions
from xendbg.views.console import ConsoleView
from xendbg.views.driver import Batch, Driver, loader
from xendbg.views.engine import EngineProcess
from xendbg.views.evtchn import EventChannelsView
from xendbg.views.fmt import vtime_text
from xendbg.views.hypercall_log import HypercallLogView
from xendbg.views.memory import MemoryView
from xendbg.views.multicall import MulticallView
from xendbg.views.p2m import P2mTable, P2mView
from xendbg.views.pagetypes import PageTypesView
from xendbg.views.pagewalk import PageWalkView
from xendbg.views.registers import RegistersView
from xendbg.views.stack import StackView
from xendbg.views.status import StatusBar
from xendbg.views.timers import TimersView
from xendbg.views.vcpu import VcpuInfoView

if TYPE_CHECKING:
    from xendbg.runner import RunOptions

# The Xen panels: tab id → (title, panel id). Panels on inactive tabs get the view when shown.
XEN_TABS = (("tab-evtchn", "Events", "evtchn"), ("tab-vcpu", "vcpu_info", "vcpu"),
            ("tab-timers", "Timers", "timers"), ("tab-multicall", "Multicall", "multicall"),
            ("tab-p2m", "pfn→mfn", "p2m"), ("tab-pagetypes", "Page types", "pagetypes"),
            ("tab-walk", "Page walk", "walk"), ("tab-memory", "Memory", "memory"))
FRAME_TABS = {"tab-p2m", "tab-pagetypes", "tab-walk"}     # need the frame table while running


class MainScreen(Screen):
    BINDINGS = [
        Binding("f5", "run('continue')", "Continue", priority=True),
        Binding("f6", "pause", "Pause", priority=True),
        Binding("f7", "run('stepi')", "Stepi", priority=True),
        Binding("f8", "run('step-hypercall')", "Step hcall", priority=True),
        Binding("f9", "run('finish-hypercall')", "Finish hcall", priority=True),
        Binding("f2", "toggle_breakpoint", "Breakpoint", priority=True),
        Binding("f4", "focus_command", "Command", priority=True),
    ]

    def __init__(self, opts: RunOptions, show_speed: bool = True, *,
                 in_process: bool = False) -> None:
        super().__init__()
        if in_process:
            self.driver = Driver(loader(opts, opts.symbols), self.post_message,
                                 backlog=lambda: self.message_queue_size)
        else:
            self.driver = EngineProcess(opts, opts.symbols, self.post_message)
        self.view: View | None = None
        self.show_speed = show_speed
        self.stops = 0                   # stops shown so far (the first: the guest's entry)
        self.running = False
        self.command_output: deque[str] = deque(maxlen=1000)   # the command log, as text

    def compose(self) -> ComposeResult:
        status = StatusBar(id="status")
        status.show_speed = self.show_speed
        yield status
        with Horizontal(id="main"):
            with Vertical(id="left"):
                yield CodeView(id="code")
                yield StackView(id="stack")
            with Vertical(id="right"):
                yield RegistersView(id="registers")
                with TabbedContent(id="xen"):
                    for tab_id, title, panel in XEN_TABS:
                        with TabPane(title, id=tab_id):
                            yield from self._xen_panel(panel)
        with TabbedContent(id="bottom"):
            with TabPane("Console", id="tab-console"):
                yield ConsoleView(id="console")
            with TabPane("Hypercalls", id="tab-hypercalls"):
                yield HypercallLogView(id="hypercalls")
            with TabPane("Commands", id="tab-commands"):
                yield RichLog(id="command-log", wrap=False, markup=False, max_lines=5000)
        yield CommandLine(self.complete, id="command")
        yield Footer()

    @staticmethod
    def _xen_panel(panel: str) -> ComposeResult:
        simple = {"evtchn": EventChannelsView, "vcpu": VcpuInfoView, "timers": TimersView,
                  "multicall": MulticallView, "pagetypes": PageTypesView}
        if panel in simple:
            yield simple[panel](id=panel)
        elif panel == "p2m":
            yield P2mView(id="p2m")
        elif panel == "walk":
            yield PageWalkView(id="walk")
        else:
            yield MemoryView(id="memory")

    def on_mount(self) -> None:
        self.query_one("#code").border_title = "Code"
        self.query_one("#registers").border_title = "Registers"
        self.query_one("#stack").border_title = "Stack"
        self.query_one("#command", CommandLine).focus()
        self.run_emulator()

    def on_unmount(self) -> None:
        self.driver.close()

    @work(thread=True, exclusive=True, group="emulator", name="emulator")
    def run_emulator(self) -> None:
        self.driver.serve()

    # -- what the user asks for ----------------------------------------------------------------------
    def execute(self, line: str) -> None:
        """Run a command line (as typed in the command line) and show it in the command log."""
        self.log_output(f"(xendbg) {line}")
        self.driver.submit(line)

    def action_run(self, command: str) -> None:
        self.execute(command)

    def action_pause(self) -> None:
        self.driver.pause()

    def action_focus_command(self) -> None:
        self.query_one("#command", CommandLine).focus()

    def action_toggle_breakpoint(self) -> None:
        address = self.query_one(CodeView).selected_address()
        if address is not None:
            self.toggle_breakpoint(address)

    def toggle_breakpoint(self, address: int) -> None:
        view = self.view
        if view is not None:
            for bp in view.session.breakpoints:
                if bp.kind == "code" and bp.address == address:
                    self.execute(f"delete {bp.number}")
                    return
        self.execute(f"break *{address:#x}")

    def show_tab(self, tab_id: str) -> None:
        for tabs in self.query(TabbedContent):
            if tabs.query(f"#{tab_id}"):
                tabs.active = tab_id

    def complete(self, line: str) -> list[str]:
        from xendbg.debugger.commands import COMMANDS
        from xendbg.debugger.decode import VIRQ_NAMES
        from xendbg.debugger.info import TOPICS
        from xendbg.machine import hypercalls
        names = [c.name for c in COMMANDS] + [a for c in COMMANDS for a in c.aliases]
        return completions(line, names, list(TOPICS), [d.name for d in hypercalls.TABLE],
                           [v.lower() for v in VIRQ_NAMES.values()], self.driver.symbols_matching)

    def on_input_submitted(self, event: CommandLine.Submitted) -> None:
        if not isinstance(event.input, CommandLine):
            return
        event.stop()
        line = event.value.strip()
        event.input.value = ""
        if line:
            event.input.remember(line)
            self.execute(line)

    def on_command_line_candidates(self, event: CommandLine.Candidates) -> None:
        self.log_output("  ".join(event.options[:60]))
        self.show_tab("tab-commands")

    def on_code_view_breakpoint_toggled(self, event: CodeView.BreakpointToggled) -> None:
        self.toggle_breakpoint(event.address)

    def on_p2m_table_frame_selected(self, event: P2mTable.FrameSelected) -> None:
        if event.mfn is not None:
            self.driver.set_view(frame_mfn=event.mfn)

    def on_page_walk_view_address_requested(self, event: PageWalkView.AddressRequested) -> None:
        self.driver.show_address(event.what, event.text)

    def on_console_view_typed(self, event: ConsoleView.Typed) -> None:
        self.driver.console_input(event.data)

    def on_tabbed_content_tab_activated(self, event: TabbedContent.TabActivated) -> None:
        tab = self._bottom_tab()
        if tab == "tab-console":
            self.query_one(ConsoleView).redraw()
        elif tab == "tab-hypercalls":
            self.query_one(HypercallLogView).redraw()
        self.driver.set_view(frames=self._frames_wanted())
        self._push_view()

    def _frames_wanted(self) -> bool:
        return self.query_one("#xen", TabbedContent).active in FRAME_TABS

    # -- what the machine says ---------------------------------------------------------------------
    def on_batch(self, message: Batch) -> None:
        """Several messages at once: applied together, so that the screen is drawn once."""
        handlers = {MachineLoaded: self.on_machine_loaded, SnapshotReady: self.on_snapshot_ready,
                    RunStateChanged: self.on_run_state_changed, GuestSpeed: self.on_guest_speed,
                    ConsoleOutput: self.on_console_output,
                    HypercallsTraced: self.on_hypercalls_traced,
                    CommandFinished: self.on_command_finished}
        with self.app.batch_update():
            for item in message.messages:
                handlers[type(item)](item)

    def on_machine_loaded(self, message: MachineLoaded) -> None:
        self.app.sub_title = message.title
        self.log_output(
            f"loaded {message.title}{': ' + message.detail if message.detail else ''} — stopped "
            "at its entry; F5 continue, F7 stepi, F8 step to the next hypercall, help for commands")

    def on_load_failed(self, message: LoadFailed) -> None:
        status = self.query_one(StatusBar)
        status.state, status.reason = "failed", message.reason
        self.log_output(f"cannot load the guest: {message.reason}", error=True)
        self.show_tab("tab-commands")

    def on_snapshot_ready(self, message: SnapshotReady) -> None:
        view = message.view
        self.view = view
        self._push_view()
        if view.live:
            self.call_after_refresh(self.driver.shown)
        status = self.query_one(StatusBar)
        status.insns = view.snap.insns
        status.vtime = vtime_text(view)
        snap = view.snap
        if snap.domain_state == "crashed":
            status.state, status.reason = "crashed", snap.dying_reason or ""
        elif snap.domain_state == "shutdown":
            status.state, status.reason = "shut down", snap.dying_reason or ""
        elif not view.live:
            status.state = "running" if self.running else "stopped"
            if view.session.last_stop is None:
                status.reason = "at the entry (Xen's trampoline enters the guest at its first " \
                                "instruction)"
        if view.kind == "stop":
            self.stops += 1

    def on_run_state_changed(self, message: RunStateChanged) -> None:
        self.running = message.running
        status = self.query_one(StatusBar)
        if message.running:
            status.state, status.reason = "running", message.command
            return
        status.state = "stopped"
        status.reason = _reason_text(message.reason, message.text)
        if message.mips is not None:
            status.mips = message.mips
        if message.reason in ("crash", "shutdown", "blocked"):
            self.notify(message.text.splitlines()[0] if message.text else message.reason,
                        title=f"the guest {'crashed' if message.reason == 'crash' else 'stopped'}",
                        severity="error" if message.reason == "crash" else "warning")

    def on_guest_speed(self, message: GuestSpeed) -> None:
        status = self.query_one(StatusBar)
        status.mips = message.mips
        status.insns = message.insns

    # The console and the hypercall log keep what arrives while their tab is hidden and draw it
    # when the tab is shown: repainting a hidden widget costs a rebuild of the screen's map.
    def on_console_output(self, message: ConsoleOutput) -> None:
        self.query_one(ConsoleView).write_guest(message.text,
                                                draw=self._bottom_tab() == "tab-console")

    def on_hypercalls_traced(self, message: HypercallsTraced) -> None:
        self.query_one(HypercallLogView).add(message.events, message.first_seq, message.dropped,
                                             draw=self._bottom_tab() == "tab-hypercalls")

    def _bottom_tab(self) -> str:
        return self.query_one("#bottom", TabbedContent).active

    def on_command_finished(self, message: CommandFinished) -> None:
        text = message.text or ("" if message.ok else "failed")
        if text:
            self.log_output(text, error=not message.ok)

    def log_output(self, text: str, error: bool = False) -> None:
        """Add to the command log (the Commands tab)."""
        self.command_output.append(text)
        self.query_one("#command-log", RichLog).write(Text(text, style="bold red" if error
                                                           else ""))

    def _push_view(self) -> None:
        """Hand the current view to the panels on screen (the others get it when shown)."""
        view = self.view
        if view is None:
            return
        for selector in ("#code", "#registers", "#stack"):
            self.query_one(selector).view = view
        active = self.query_one("#xen", TabbedContent).active
        for tab_id, _title, panel in XEN_TABS:
            if tab_id == active:
                widget = self.query_one(f"#{panel}")
                if panel in ("walk", "pagetypes") and view.snap.frames is None \
                        and widget.view is not None:
                    # a live snapshot without the frame table: keep the last one shown
                    continue
                widget.view = view


def _reason_text(reason: str | None, text: str) -> str:
    """The stop's reason and the first line of what the session said about it, once."""
    first = text.splitlines()[0] if text else ""
    if not reason:
        return first
    words = reason.replace("-", " ").lower()
    if first.lower().replace("-", " ").startswith(words) or not first:
        return first or reason
    return f"{reason}: {first}"

"""The Textual front end (a first screen; the full debugger TUI is being built on the same session).

It builds the machine for KERNEL (default: the built-in demo guest), runs it in a worker thread in
bounded slices, and shows the guest console and the machine's state as it goes. The emulator never
runs on the UI thread; the UI receives console data through thread-safe messages.
"""

from __future__ import annotations

import sys

from textual import work
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.message import Message
from textual.widgets import Footer, Header, Log, Static

from xendbg.runner import RunOptions, UsageError, load

DEMO_GUEST = "hello-pv64"          # until the dedicated ``demo`` guest lands
SLICE = 2_000_000                  # guest instructions per slice between UI updates


class XendbgApp(App):
    TITLE = "xendbg"
    BINDINGS = [
        Binding("q", "quit", "Quit"),
        Binding("p", "pause", "Pause"),
        Binding("c", "resume", "Continue"),
    ]
    CSS = """
    #status { height: 3; border: round $accent; padding: 0 1; }
    #console { border: round $primary; }
    """

    class ConsoleData(Message):
        def __init__(self, text: str) -> None:
            super().__init__()
            self.text = text

    class Status(Message):
        def __init__(self, text: str) -> None:
            super().__init__()
            self.text = text

    def __init__(self, opts: RunOptions) -> None:
        super().__init__()
        self.opts = opts
        self.machine = None
        self._paused = False

    def compose(self) -> ComposeResult:
        yield Header(show_clock=False)
        with Vertical():
            yield Static("loading…", id="status")
            yield Log(id="console", highlight=False)
        yield Footer()

    def on_mount(self) -> None:
        self.sub_title = self.opts.kernel
        try:
            self.machine, _image, path = load(self.opts)
        except UsageError as exc:
            self.query_one("#status", Static).update(f"cannot load: {exc}")
            return
        self.machine.listeners.append(self._on_machine_event)
        self.sub_title = str(path)
        self.run_guest()

    def _on_machine_event(self, event) -> None:
        if event.kind == "console":    # called on the worker thread: post, never touch widgets
            self.post_message(self.ConsoleData(event.data["data"].decode("utf-8", "replace")))

    @work(thread=True, exclusive=True)
    def run_guest(self) -> None:
        m = self.machine
        while True:
            reason = m.run(SLICE)
            self.post_message(self.Status(self._status_text(reason)))
            if reason != "budget":
                return

    def _status_text(self, reason: str) -> str:
        m = self.machine
        d = m.domain
        if d.crashed:
            state = f"crashed: {d.crashed}"
        elif d.shutdown:
            state = f"shut down ({d.shutdown.name})"
        elif reason == "blocked":
            state = "blocked (nothing can wake it)"
        elif reason == "pause":
            state = "paused"
        else:
            state = "running"
        calls = sum(m.stats.calls.values())
        return f"{state} — {m.insns} instructions, {calls} hypercalls, rip {m.cpu.ip:#x}"

    def on_xendbg_app_console_data(self, message: ConsoleData) -> None:
        self.query_one("#console", Log).write(message.text)

    def on_xendbg_app_status(self, message: Status) -> None:
        self.query_one("#status", Static).update(message.text)

    def action_pause(self) -> None:
        if self.machine is not None:
            self.machine.pause()

    def action_resume(self) -> None:
        if self.machine is not None and not self.machine.domain.dying:
            self.run_guest()


def run_app(args) -> int:
    opts = RunOptions(kernel=args.kernel or DEMO_GUEST, cmdline=args.cmdline,
                      ramdisk=args.ramdisk, memory=args.memory, p2m=args.p2m)
    if not sys.stdout.isatty():
        print("xendbg: the debugger needs a terminal; use `xendbg run` for headless runs",
              file=sys.stderr)
        return 2
    XendbgApp(opts).run()
    return 0

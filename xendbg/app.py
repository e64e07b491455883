"""The Textual app: ``xendbg [KERNEL]`` opens the debugger (no KERNEL: the built-in demo guest).

Thin on purpose: the app holds the options, the stylesheet, the quit binding and the command
palette's commands; :class:`~xendbg.views.screens.main.MainScreen` composes the panels and owns the
:class:`~xendbg.views.engine.EngineProcess`, which runs the machine in a process of its own
(``in_process=True``: a :class:`~xendbg.views.driver.Driver` in a worker thread of this one).
"""

from __future__ import annotations

import sys
from collections.abc import Iterable

from textual.app import App, SystemCommand
from textual.binding import Binding
from textual.screen import Screen

from xendbg.runner import RunOptions
from xendbg.views.screens.main import XEN_TABS, MainScreen

DEMO_GUEST = "demo"                # the built-in demo guest (xendbg/guests/src/demo.S)


class XendbgApp(App):
    TITLE = "xendbg"
    CSS_PATH = "app.tcss"
    BINDINGS = [Binding("ctrl+q", "quit", "Quit", priority=True)]

    def __init__(self, opts: RunOptions, *, show_speed: bool = True,
                 in_process: bool = False) -> None:
        super().__init__()
        self.opts = opts
        self.show_speed = show_speed
        self.in_process = in_process

    def on_mount(self) -> None:
        self.sub_title = self.opts.kernel
        self.push_screen(MainScreen(self.opts, self.show_speed, in_process=self.in_process))

    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        yield from super().get_system_commands(screen)
        if not isinstance(screen, MainScreen):
            return
        for title, command, help_text in (
                ("Continue", "continue", "run until something stops the guest (F5)"),
                ("Pause", None, "stop the running guest (F6)"),
                ("Step one instruction", "stepi", "execute one guest instruction (F7)"),
                ("Step to the next hypercall", "step-hypercall",
                 "run to the next hypercall's entry, decoded (F8)"),
                ("Finish the hypercall", "finish-hypercall",
                 "let Xen make the call stopped at, show what changed (F9)"),
                ("List breakpoints", "info breakpoints", "every breakpoint and watchpoint")):
            if command is None:
                yield SystemCommand(title, help_text, screen.action_pause)
            else:
                yield SystemCommand(title, help_text, lambda c=command: screen.execute(c))
        for tab_id, title, _panel in XEN_TABS:
            yield SystemCommand(f"Show {title}", f"the {title} panel",
                                lambda t=tab_id: screen.show_tab(t))
        for tab_id, title in (("tab-console", "console"), ("tab-hypercalls", "hypercall log"),
                              ("tab-commands", "command output")):
            yield SystemCommand(f"Show the {title}", f"the {title} tab",
                                lambda t=tab_id: screen.show_tab(t))


def tui_options(args) -> RunOptions:
    """The machine options of ``xendbg [KERNEL] …`` (the same as ``xendbg run``'s)."""
    return RunOptions(kernel=args.kernel or DEMO_GUEST, cmdline=args.cmdline,
                      ramdisk=args.ramdisk, memory=args.memory, p2m=args.p2m,
                      symbols=getattr(args, "symbols", None), vcpus=args.vcpus,
                      tsc_khz=args.tsc_khz, start_date=args.start_date)


def run_app(args) -> int:
    opts = tui_options(args)
    if opts.symbols is not None:
        # As `xendbg run --symbols`: a file that cannot be read or parsed is bad usage, said on
        # stderr before the screen opens (the loader parses it again with the image's symbols).
        from xendbg.debugger.symbols import SymbolError, load_system_map
        try:
            load_system_map(opts.symbols)
        except SymbolError as exc:
            print(f"xendbg: --symbols: {exc}", file=sys.stderr)
            return 2
    if not sys.stdout.isatty():
        print("xendbg: the debugger needs a terminal; use `xendbg run` for headless runs",
              file=sys.stderr)
        return 2
    XendbgApp(opts).run()
    return 0

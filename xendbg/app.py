"""The Textual app: ``xendbg [KERNEL]`` opens the debugger (no KERNEL: the built-in demo guest).

Thin on purpose: the app holds the options, the stylesheet, the quit binding and the command
palette's commands; :class:`~xendbg.views.screens.main.MainScreen` composes the panels and owns the
:class:`~xendbg.views.driver.Driver`, which runs the machine in a worker thread.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable

from textual.app import App, SystemCommand
from textual.binding import Binding
from textual.screen import Screen

from xendbg.runner import RunOptions
from xendbg.views.driver import Loaded
from xendbg.views.screens.main import XEN_TABS, MainScreen

DEMO_GUEST = "demo"                # the built-in demo guest (xendbg/guests/src/demo.S)


def loader(opts: RunOptions, symbols_file: str | None = None):
    """Build the machine for ``opts`` (on the emulator thread) with the guest's symbols."""

    def load() -> Loaded:
        from xendbg.debugger import symbols_for_image
        from xendbg.runner import load as load_machine
        machine, image, path = load_machine(opts)
        symbols = symbols_for_image(image, symbols_file)
        return Loaded(machine, symbols, path.name,
                      f"{image.abi}, {machine.domain.nr_pages} pages, {len(symbols)} symbols")

    return load


class XendbgApp(App):
    TITLE = "xendbg"
    CSS_PATH = "app.tcss"
    BINDINGS = [Binding("ctrl+q", "quit", "Quit", priority=True)]

    def __init__(self, opts: RunOptions, *, show_speed: bool = True) -> None:
        super().__init__()
        self.opts = opts
        self.show_speed = show_speed

    def on_mount(self) -> None:
        self.sub_title = self.opts.kernel
        self.push_screen(MainScreen(loader(self.opts, self.opts.symbols), self.show_speed))

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


def run_app(args) -> int:
    opts = RunOptions(kernel=args.kernel or DEMO_GUEST, cmdline=args.cmdline,
                      ramdisk=args.ramdisk, memory=args.memory, p2m=args.p2m,
                      symbols=getattr(args, "symbols", None))
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

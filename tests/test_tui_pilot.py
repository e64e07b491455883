"""The TUI driven with Textual's Pilot: the demo guest running and paused, hypercall stepping,
breakpoints from the command line and the code panel, the Xen panels, the console, completion,
history, the command palette, and a guest that shuts down under the TUI."""

from __future__ import annotations

import asyncio
import functools
import inspect
import re

from rich.console import Console

from xendbg.views.code import CodeView
from xendbg.views.command_line import CommandLine
from xendbg.views.hypercall_log import HypercallTable
from xendbg.views.lines import LineTable
from xendbg.views.p2m import P2mTable
from xendbg.views.status import StatusBar


def sync(cls):
    """Run each ``async def test_*`` of a class with asyncio.run (no async pytest plugin here)."""
    for name, fn in list(vars(cls).items()):
        if name.startswith("test_") and inspect.iscoroutinefunction(fn):
            def make(fn):
                @functools.wraps(fn)
                def test(*args, **kwargs):
                    asyncio.run(fn(*args, **kwargs))
                return test
            setattr(cls, name, make(fn))
    return cls


def text_of(widget) -> str:
    """What a panel shows, as plain text (a Line API table: its visible lines)."""
    if isinstance(widget, LineTable):
        return "\n".join(widget.render_line(y).text for y in range(widget.size.height))
    console = Console(width=200, record=True, file=open("/dev/null", "w"))  # noqa: SIM115
    console.print(widget.render_view(widget.view))
    return console.export_text()


async def type_command(pilot, line: str) -> None:
    command = pilot.app.screen.query_one(CommandLine)
    command.focus()
    command.value = line
    await pilot.press("enter")


@sync
class TestRunControl:
    async def test_demo_runs_live_pauses_and_steps_a_hypercall(self, tui):
        """Start on demo, run (live refresh), pause, step to a hypercall and finish it."""
        app = tui.app("demo")
        async with app.run_test(size=(160, 48)) as pilot:
            await tui.loaded(pilot)
            screen = app.screen
            status = screen.query_one(StatusBar)
            assert status.state == "stopped" and screen.view.snap.insns == 0
            await pilot.press("f5")                                   # continue
            await tui.wait(pilot, lambda: screen.view.live and screen.view.snap.insns > 0)
            assert status.state == "running"
            await pilot.press("f6")                                   # pause
            await tui.stopped(pilot, 2)
            assert status.state == "stopped" and "pause" in status.reason.lower()
            await pilot.press("f8")                                   # step-hypercall
            await tui.stopped(pilot, 3)
            view = screen.view
            assert view.session.at_entry is not None                  # stopped before a call
            assert "Hypercall entry" in status.reason
            code = screen.query_one(CodeView)
            assert code.view.snap.code.ip == view.snap.ip
            assert "syscall" in text_of(code)                          # the trapping instruction
            await pilot.press("f9")                                   # finish-hypercall
            await tui.stopped(pilot, 4)
            assert screen.view.session.at_entry is None
            assert screen.view.snap.insns > view.snap.insns

    async def test_event_channel_and_multicall_panels_show_what_the_guest_did(self, tui):
        app = tui.app("demo")
        async with app.run_test(size=(160, 48)) as pilot:
            await tui.loaded(pilot)
            screen = app.screen
            await type_command(pilot, "break issue_multicall")
            await type_command(pilot, "continue")
            await tui.stopped(pilot, 2)
            await type_command(pilot, "continue")                     # the second burst
            await tui.stopped(pilot, 3)
            await type_command(pilot, "step-hypercall")               # the multicall's entry
            await tui.stopped(pilot, 4)
            assert screen.view.session.at_entry_name == "multicall"
            screen.show_tab("tab-multicall")
            await pilot.pause(0.1)
            text = text_of(screen.query_one("#multicall"))
            assert "stopped before this batch" in text and "EVTCHNOP_send" in text
            await pilot.press("f9")                                   # run the batch
            await tui.stopped(pilot, 5)
            text = text_of(screen.query_one("#multicall"))
            assert "xen_version" in text and "mmu_update" in text and "mmuext_op" in text
            assert "-EINVAL" in text                                  # the send to a bad port
            screen.show_tab("tab-evtchn")
            await pilot.pause(0.1)
            text = text_of(screen.query_one("#evtchn"))
            for kind in ("VIRQ_TIMER", "IPI", "unbound"):
                assert kind in text
            ports = {p.state: p for p in screen.view.snap.ports}
            assert ports["ipi"].sends >= 3 and ports["ipi"].raised >= 3
            assert ports["unbound"].sends >= 2 and ports["unbound"].raised == 0

    async def test_breakpoint_from_the_command_line_is_hit(self, tui):
        app = tui.app("demo")
        async with app.run_test(size=(160, 48)) as pilot:
            await tui.loaded(pilot)
            screen = app.screen
            await type_command(pilot, "break set_single_shot")
            await type_command(pilot, "continue")
            await tui.stopped(pilot, 2)
            view = screen.view
            assert view.session.last_stop == "breakpoint"
            assert view.session.label(view.snap.ip) == "set_single_shot"
            code_text = text_of(screen.query_one(CodeView))
            marked = [line for line in code_text.splitlines() if "set_single_shot" in line
                      and "●▶" in line]
            assert marked, code_text                 # the breakpoint marker on the current line
            assert "breakpoint" in screen.query_one(StatusBar).reason.lower()

    async def test_f2_toggles_a_breakpoint_on_the_code_cursor(self, tui):
        app = tui.app("demo")
        async with app.run_test(size=(160, 48)) as pilot:
            await tui.loaded(pilot)
            screen = app.screen
            await type_command(pilot, "break main")
            await type_command(pilot, "continue")
            await tui.stopped(pilot, 2)
            code = screen.query_one(CodeView)
            code.focus()
            await pilot.press("down", "down")
            address = code.selected_address()
            await pilot.press("f2")                                   # set
            await tui.wait(pilot, lambda: address in screen.view.session.breakpoint_addresses)
            await pilot.press("f2")                                   # and remove
            await tui.wait(pilot, lambda: address not in screen.view.session.breakpoint_addresses)

    async def test_the_command_line_options_reach_the_machine(self, tui):
        """`xendbg KERNEL --tsc-khz --start-date --vcpus` as `xendbg run` takes them."""
        from xendbg.app import XendbgApp, tui_options
        from xendbg.cli import build_tui_parser
        opts = tui_options(build_tui_parser().parse_args(
            ["hello-pv64", "--memory", "16", "--tsc-khz", "3000000",
             "--start-date", "2030-06-01"]))
        app = XendbgApp(opts, show_speed=False)
        async with app.run_test(size=(160, 48)) as pilot:
            await tui.loaded(pilot)
            await type_command(pilot, "info timers")
            screen = app.screen
            await tui.wait(pilot, lambda: "kHz" in "\n".join(screen.command_output))
            assert "TSC at 3000000 kHz" in "\n".join(screen.command_output)
            assert "wallclock at boot 2030-06-01T00:00:00Z" in "\n".join(screen.command_output)
        smp = tui_options(build_tui_parser().parse_args(["hello-pv64", "--vcpus", "2"]))
        app = XendbgApp(smp, show_speed=False)
        async with app.run_test(size=(160, 48)) as pilot:
            status = app.screen.query_one(StatusBar)
            await tui.wait(pilot, lambda: status.state == "failed")
            assert "--vcpus 2" in status.reason

    async def test_a_guest_that_shuts_down_leaves_the_tui_up(self, tui):
        app = tui.app("hello-pv64", memory=16)
        async with app.run_test(size=(160, 48)) as pilot:
            await tui.loaded(pilot)
            screen = app.screen
            await pilot.press("f5")
            await tui.stopped(pilot, 2)
            status = screen.query_one(StatusBar)
            assert status.state == "shut down" and "poweroff" in status.reason
            await pilot.press("f5")                                   # nothing can run now
            await tui.wait(pilot, lambda: "nothing can run" in "\n".join(screen.command_output))
            assert app.is_running and status.state == "shut down"


@sync
class TestPanels:
    async def test_p2m_jump_and_the_selected_frame_in_page_types(self, tui):
        app = tui.app("demo")
        async with app.run_test(size=(160, 48)) as pilot:
            await tui.loaded(pilot)
            screen = app.screen
            screen.show_tab("tab-p2m")
            await tui.wait(pilot, lambda: screen.query_one(P2mTable).row_count() > 0)
            table = screen.query_one(P2mTable)
            ft = screen.view.snap.frames
            assert table.row_count() == len(ft.p2m) == screen.view.snap.code.ip * 0 + len(ft.p2m)
            top = screen.view.snap.vcpu.guest_table                   # the pinned L4
            jump = screen.query_one("#p2m-jump")
            jump.focus()
            jump.value = f"mfn {top:#x}"
            await pilot.press("enter")
            pfn = int(ft.m2p[top])
            await tui.wait(pilot, lambda: table.cursor == pfn)
            line = [ln for ln in text_of(table).splitlines() if ln.startswith(f"{pfn:x} ")]
            assert line and "L4" in line[0] and "pinned" in line[0]
            screen.show_tab("tab-pagetypes")
            await tui.wait(pilot, lambda: screen.view.snap.frame is not None
                           and screen.view.snap.frame.mfn == top)
            await pilot.pause(0.05)
            text = text_of(screen.query_one("#pagetypes"))
            assert f"frame mfn {top:#x}" in text and "L4" in text and "history" in text

    async def test_p2m_renders_65536_pages_through_the_line_api(self, tui):
        app = tui.app("demo", memory=256)
        async with app.run_test(size=(160, 48)) as pilot:
            await tui.loaded(pilot)
            screen = app.screen
            screen.show_tab("tab-p2m")
            table = screen.query_one(P2mTable)
            await tui.wait(pilot, lambda: table.row_count() == 65536)
            table.focus()
            await pilot.press("end")
            assert table.cursor == 65535
            assert f"{65535:x} " in text_of(table)
            assert len(screen.query("P2mTable *")) == 0               # no widget per row

    async def test_walk_and_memory_panels(self, tui):
        app = tui.app("demo")
        async with app.run_test(size=(160, 48)) as pilot:
            await tui.loaded(pilot)
            screen = app.screen
            await type_command(pilot, "break main")
            await type_command(pilot, "continue")
            await tui.stopped(pilot, 2)
            screen.show_tab("tab-walk")
            box = screen.query_one("#walk-address")
            box.focus()
            box.value = "main"
            await pilot.press("enter")
            await tui.wait(pilot, lambda: screen.view.snap.walk is not None)
            await pilot.pause(0.05)
            text = str(screen.query_one("#walk-result").render())
            assert "L4" in text and "L1" in text and "executable" in text
            screen.show_tab("tab-memory")
            box = screen.query_one("#memory-address")
            box.focus()
            box.value = "demo_data"
            await pilot.press("enter")
            await tui.wait(pilot, lambda: screen.view.snap.memory is not None)
            await pilot.pause(0.05)
            assert "xendbg demo" in str(screen.query_one("#memory-dump").render())

    async def test_hypercall_log_filters_by_name_and_errors(self, tui):
        app = tui.app("demo")
        async with app.run_test(size=(160, 48)) as pilot:
            await tui.loaded(pilot)
            screen = app.screen
            await type_command(pilot, "break idle")
            await type_command(pilot, "continue")
            await tui.stopped(pilot, 2)
            screen.show_tab("tab-hypercalls")
            table = screen.query_one(HypercallTable)
            await tui.wait(pilot, lambda: table.row_count() > 10)
            names = {r.name for r in table.shown}
            assert {"console_io", "multicall", "event_channel_op"} <= names
            screen.query_one("#hypercall-filter").value = "errors"
            await tui.wait(pilot, lambda: table.filter.errors)
            assert table.shown and all(r.error for r in table.shown)
            assert any(r.multicall == 4 and r.error == "-EINVAL" for r in table.shown)
            screen.query_one("#hypercall-filter").value = "mmu*"
            await tui.wait(pilot, lambda: table.filter.text == "mmu*")
            assert {r.name for r in table.shown} <= {"mmu_update", "mmuext_op"} and table.shown

    async def test_console_keystrokes_go_to_the_guest(self, tui):
        app = tui.app("demo")
        async with app.run_test(size=(160, 48)) as pilot:
            await tui.loaded(pilot)
            screen = app.screen
            console = screen.query_one("#console")
            console.focus()
            await pilot.press("h", "i", "enter")
            # The machine is in the engine's process: ask it, as a user would.
            await type_command(pilot, "info console")
            await tui.wait(pilot, lambda: any("bytes of input delivered" in line
                                              for line in screen.command_output))
            said = next(line for text in screen.command_output for line in text.splitlines()
                        if "bytes of input delivered" in line)
            counts = re.search(r"(\d+) bytes of input delivered, (\d+) queued", said)
            delivered, queued = (int(n) for n in counts.groups())
            assert delivered + queued == 3, said                   # "h", "i", "\r"
            await pilot.press("f5")                          # F-keys still drive the debugger
            await tui.wait(pilot, lambda: screen.running)
            await pilot.press("f6")
            await tui.stopped(pilot, 2)
            assert "demo: burst" in "\n".join(console.lines)


@sync
class TestCommandLine:
    async def test_completion_and_history(self, tui):
        app = tui.app("demo")
        async with app.run_test(size=(160, 48)) as pilot:
            await tui.loaded(pilot)
            command = app.screen.query_one(CommandLine)
            command.focus()
            command.value = "inf"
            command.cursor_position = 3
            await pilot.press("tab")
            assert command.value == "info "
            await pilot.press("e", "v", "tab")
            assert command.value == "info evtchn "
            command.value = "break hypercall mmu"
            await pilot.press("tab")
            assert command.value.startswith("break hypercall mmu")
            command.value = "break issue_mul"
            await pilot.press("tab")
            assert command.value == "break issue_multicall "
            await pilot.press("enter")
            await type_command(pilot, "info breakpoints")
            await tui.wait(pilot, lambda: not command.value)
            await pilot.press("up")
            assert command.value == "info breakpoints"
            await pilot.press("up")
            assert command.value == "break issue_multicall"
            await pilot.press("down", "down")
            assert command.value == ""

    async def test_command_palette_switches_panels(self, tui):
        app = tui.app("demo")
        async with app.run_test(size=(160, 48)) as pilot:
            await tui.loaded(pilot)
            await pilot.press("ctrl+p")
            await pilot.pause(0.2)
            await pilot.press(*"Show Timers")
            await pilot.pause(0.3)
            await pilot.press("enter")
            await tui.wait(pilot, lambda: app.screen.query_one("#xen").active == "tab-timers")


@sync
class TestDrawingCost:
    """What keeps the UI thread (and through the GIL, the guest) cheap: no layout of the screen
    while running or at a stop, and no repaint of a log that is not on screen."""

    async def test_live_refreshes_and_stops_never_lay_the_screen_out(self, tui):
        app = tui.app("demo")
        async with app.run_test(size=(160, 48)) as pilot:
            await tui.loaded(pilot)
            screen = app.screen
            screen.driver.run_for(150_000)           # fills the console: its scrollbar appears
            await tui.stopped(pilot, 2)              # (a layout, once)
            await pilot.pause(0.3)
            layouts = []
            refresh_layout = screen._refresh_layout
            screen._refresh_layout = lambda *a, **kw: (layouts.append(a), refresh_layout(*a, **kw))
            await pilot.press("f5")
            seen = set()
            await tui.wait(pilot, lambda: (seen.add(id(screen.view)) if screen.view.live
                                           else None) or len(seen) >= 3)
            await pilot.press("f6")
            await tui.stopped(pilot, 3)
            stops = 3
            for key in ("f7", "f7", "f8", "f9", "f7"):   # backtraces and ip symbols come and go
                await pilot.press(key)
                stops += 1
                await tui.stopped(pilot, stops)
            await pilot.pause(0.1)
            assert not layouts

    async def test_the_hidden_hypercall_log_keeps_records_and_draws_them_when_shown(self, tui):
        app = tui.app("demo")
        async with app.run_test(size=(160, 48)) as pilot:
            await tui.loaded(pilot)
            screen = app.screen
            table = screen.query_one(HypercallTable)
            await type_command(pilot, "break idle")
            await type_command(pilot, "continue")
            await tui.stopped(pilot, 2)
            assert table.row_count() > 10 and table._stale_at_end is not None   # kept, not drawn
            screen.show_tab("tab-hypercalls")
            await tui.wait(pilot, lambda: table._stale_at_end is None)
            await pilot.pause(0.1)
            last = table.shown[-1]
            assert f" {last.name}" in text_of(table)          # followed to the end, drawn

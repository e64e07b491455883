"""Snapshot tests (pytest-textual-snapshot): the main screen and each panel, with the demo guest
stopped after a fixed instruction budget, so that every run shows the same state.

The budget run has no live refresh (no ticks) and the status bar hides the wall-clock speed: what
is on screen depends on the guest alone. Update the SVGs after a deliberate change with
``python -m pytest tests/test_tui_snapshots.py --snapshot-update`` and look at them.
"""

from __future__ import annotations

import pytest

BUDGET = 150_000           # instructions from the entry: a few bursts of the demo guest
SIZE = (160, 48)


def at_budget(tui, tab: str | None = None, setup=None):
    """A ``run_before``: wait for the machine, run BUDGET instructions, show ``tab``."""

    async def run_before(pilot) -> None:
        await tui.loaded(pilot)
        screen = pilot.app.screen
        screen.driver.run_for(BUDGET)
        await tui.stopped(pilot, 2)
        if setup is not None:
            await setup(pilot)
        if tab is not None:
            screen.show_tab(tab)
        screen.query_one("#code").focus()        # no blinking cursor in the shot
        await pilot.pause(0.3)
        await pilot.wait_for_scheduled_animations()

    return run_before


class TestMainScreen:
    def test_entry(self, tui, snap_compare):
        """The demo guest at its entry: Xen's trampoline, nothing run yet."""
        async def run_before(pilot):
            await tui.loaded(pilot)
            pilot.app.screen.query_one("#code").focus()
            await pilot.pause(0.3)
        assert snap_compare(tui.app("demo"), terminal_size=SIZE, run_before=run_before)

    def test_after_budget(self, tui, snap_compare):
        """Code, registers, stack, event channels and the console after the budget."""
        assert snap_compare(tui.app("demo"), terminal_size=SIZE, run_before=at_budget(tui))

    def test_at_a_breakpoint(self, tui, snap_compare):
        """Stopped at a breakpoint: the marker on the current line, the reason in the status."""
        async def setup(pilot):
            pilot.app.screen.execute("break issue_multicall")
            pilot.app.screen.execute("continue")
            await tui.stopped(pilot, 3)
        assert snap_compare(tui.app("demo"), terminal_size=SIZE,
                            run_before=at_budget(tui, "tab-commands", setup))


@pytest.mark.parametrize("tab", ["tab-evtchn", "tab-vcpu", "tab-timers", "tab-multicall",
                                 "tab-p2m", "tab-pagetypes"])
def test_xen_panel(tab, tui, snap_compare):
    """Each Xen panel after the budget."""
    assert snap_compare(tui.app("demo"), terminal_size=SIZE, run_before=at_budget(tui, tab))


def test_page_walk_and_memory(tui, snap_compare):
    """The page walk of a symbol's address (the memory panel is set up too, then the walk shown)."""
    async def setup(pilot):
        screen = pilot.app.screen
        screen.driver.show_address("memory", "demo_data")
        screen.driver.show_address("walk", "demo_data")
        await tui.wait(pilot, lambda: screen.view.snap.walk is not None
                       and screen.view.snap.memory is not None)
    assert snap_compare(tui.app("demo"), terminal_size=SIZE,
                        run_before=at_budget(tui, "tab-walk", setup))


def test_hypercall_log(tui, snap_compare):
    """The hypercall log, filtered to the errors."""
    async def setup(pilot):
        screen = pilot.app.screen
        screen.show_tab("tab-hypercalls")
        screen.query_one("#hypercall-filter").value = "errors"
        await pilot.pause(0.1)
    assert snap_compare(tui.app("demo"), terminal_size=SIZE,
                        run_before=at_budget(tui, "tab-memory", setup))

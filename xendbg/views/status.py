"""The status bar: running / stopped / crashed / shut down, the stop's reason, virtual time,
instructions executed and the guest's speed."""

from __future__ import annotations

from rich.text import Text
from textual.reactive import reactive
from textual.widgets import Static

STATE_STYLES = {"running": "bold black on #5fd75f", "stopped": "bold black on #ffd75f",
                "crashed": "bold white on #d70000", "shut down": "bold black on #87afff",
                "loading": "bold black on #bcbcbc", "failed": "bold white on #d70000"}


class StatusBar(Static):
    state: reactive[str] = reactive("loading")
    reason: reactive[str] = reactive("")
    vtime: reactive[str] = reactive("")
    insns: reactive[int] = reactive(0)
    mips: reactive[float | None] = reactive(None)
    show_speed: bool = True           # off in snapshot tests: a wall-clock figure is never stable

    def render(self) -> Text:
        out = Text(no_wrap=True, overflow="ellipsis")
        out.append(f" {self.state.upper()} ", style=STATE_STYLES.get(self.state, "reverse"))
        if self.reason:
            out.append(f" {self.reason}")
        out.append(f"  │ {self.vtime}" if self.vtime else "  │")
        out.append(f"  │ {self.insns:,} instructions")
        if self.show_speed and self.mips is not None:
            out.append(f"  │ {self.mips:.3g} MIPS")
        return out

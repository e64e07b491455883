"""Pending timers: each with its kind, deadline and the virtual time left, as the clock keeps them."""

from __future__ import annotations

from rich.text import Text

from xendbg.messages import View
from xendbg.views.fmt import vtime_text
from xendbg.views.panel import SnapshotPanel


class TimersView(SnapshotPanel):
    def render_view(self, view: View) -> Text:
        snap = view.snap
        out = Text(no_wrap=True, overflow="ellipsis")
        out.append(f"virtual time {vtime_text(view)}, TSC {snap.tsc}, next deadline "
                   f"{'none' if snap.next_deadline is None else 'at instruction '}"
                   f"{'' if snap.next_deadline is None else snap.next_deadline}\n\n")
        if snap.timers is None:
            out.append("The machine's clock keeps no timers yet (set_timer_op and "
                       "VCPUOP_set_periodic_timer are not served).", style="dim")
            return out
        if not snap.timers:
            out.append("no pending timer", style="dim")
            return out
        out.append(f"{'kind':<14} {'deadline':>18} {'left':>16}  detail\n", style="bold")
        for t in snap.timers:
            out.append(f"{t.kind[:14]:<14} {f'{t.deadline} {t.unit}':>18} ")
            out.append(f"{f'{t.left} {t.unit}':>16}", style="bold red" if t.left < 0 else "")
            out.append(f"  {t.detail}\n")
        return out

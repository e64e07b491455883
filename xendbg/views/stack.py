"""Stack: the words from the stack pointer up (symbolized), and a frame-pointer backtrace."""

from __future__ import annotations

from rich.text import Text

from xendbg.messages import View
from xendbg.views.fmt import hexw
from xendbg.views.panel import SnapshotPanel

CHANGED = "bold #ffb000"


class StackView(SnapshotPanel):
    def render_view(self, view: View) -> Text:
        snap = view.snap
        stack = snap.stack
        labels = view.session
        before = {}
        if view.before is not None and view.before.stack.sp == stack.sp:
            before = dict(view.before.stack.words)
        out = Text(no_wrap=True, overflow="ellipsis")
        if view.session.backtrace:
            out.append("backtrace (frame pointers, best effort)\n", style="bold")
            for i, address in enumerate(view.session.backtrace):
                name = labels.label(address)
                out.append(f"#{i:<2} {hexw(address, snap.bits)}")
                out.append(f" <{name}>\n" if name else "\n", style="cyan")
        out.append(f"stack at {hexw(stack.sp, snap.bits)}\n", style="bold")
        for va, value in stack.words:
            offset = va - stack.sp
            out.append(f"+{offset:<4x}", style="dim")
            if value is None:
                out.append("(not mapped)\n", style="dim")
                continue
            style = CHANGED if va in before and before[va] != value else ""
            out.append(hexw(value, snap.bits), style=style)
            name = labels.label(value)
            out.append(f" <{name}>\n" if name else "\n", style="cyan")
        return out

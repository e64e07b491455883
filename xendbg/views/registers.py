"""Registers: the vCPU's general registers, flags and segments; values changed since the previous
stop are highlighted."""

from __future__ import annotations

from rich.text import Text

from xendbg.messages import View
from xendbg.views.fmt import hexw
from xendbg.views.panel import SnapshotPanel

CHANGED = "bold #ffb000"
COLUMNS = 3
SEGMENTS = {"cs", "ss", "ds", "es", "fs", "gs"}
FLAG_BITS = ((0, "CF"), (2, "PF"), (4, "AF"), (6, "ZF"), (7, "SF"), (8, "TF"), (9, "IF"),
             (10, "DF"), (11, "OF"))


def flags_text(value: int) -> str:
    return " ".join(name for bit, name in FLAG_BITS if value >> bit & 1) or "-"


class RegistersView(SnapshotPanel):
    """Three columns of registers; the instruction pointer with its symbol underneath."""

    def render_view(self, view: View) -> Text:
        snap = view.snap
        before = dict(view.before.registers) if view.before is not None else {}
        regs = [(n, v) for n, v in snap.registers]
        general = [(n, v) for n, v in regs if n not in SEGMENTS]
        segments = [(n, v) for n, v in regs if n in SEGMENTS]
        out = Text(no_wrap=True, overflow="ellipsis")
        rows = (len(general) + COLUMNS - 1) // COLUMNS
        for i in range(rows):
            for j, (name, value) in enumerate(general[i::rows][:COLUMNS]):
                if j:
                    out.append("  ")
                out.append(f"{name:<7}", style="bold")
                style = CHANGED if name in before and before[name] != value else ""
                out.append(hexw(value, snap.bits), style=style)
            out.append("\n")
        for name, value in segments:
            style = CHANGED if name in before and before[name] != value else ""
            out.append(f"{name} ", style="bold")
            out.append(f"{value & 0xFFFF:04x}", style=style)
            out.append("  ")
        out.append("\n")
        flags = snap.register("rflags" if snap.bits == 64 else "eflags") or 0
        out.append("flags ", style="bold")
        out.append(flags_text(flags))
        label = view.session.label(snap.ip)
        if label:
            out.append("\nip    ", style="bold")
            out.append(f"<{label}>", style="cyan")
        return out

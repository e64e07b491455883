"""Memory: a hex and ASCII dump at an address (guest-virtual through the current page tables, or
``ma:``/``mfn:``/``pfn:`` machine memory); bytes changed since the previous stop are highlighted."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.reactive import reactive
from textual.widgets import Input, Static

from xendbg.messages import View
from xendbg.views.fmt import hexw
from xendbg.views.pagewalk import PageWalkView

CHANGED = "bold #ffb000"


def render_memory(view: View) -> Text:
    snap = view.snap
    mem = snap.memory
    out = Text(no_wrap=True, overflow="ellipsis")
    if mem is None:
        out.append("enter an address: 0x…, a register, a symbol, or ma:/mfn:/pfn: for machine "
                   "memory", style="dim")
        return out
    old = None
    if view.before is not None and view.before.memory is not None and \
            (view.before.memory.address, view.before.memory.space) == (mem.address, mem.space):
        old = view.before.memory.data
    prefix = "ma:" if mem.space == "ma" else ""
    bits = 64 if mem.space == "ma" else snap.bits
    for row in range(0, len(mem.data), 16):
        out.append(f"{prefix}{hexw(mem.address + row, bits)}  ", style="dim")
        chunk = mem.data[row:row + 16]
        for i, b in enumerate(chunk):
            hot = old is not None and old[row + i] != b
            out.append("??" if b is None else f"{b:02x}", style=CHANGED if hot else "")
            out.append("  " if i == 7 else " ")
        out.append(" ")
        out.append("".join("." if b is None or not 32 <= b < 127 else chr(b) for b in chunk))
        out.append("\n")
    return out


class MemoryView(Vertical):
    view: reactive[View | None] = reactive(None, init=False)

    def compose(self) -> ComposeResult:
        yield Input(placeholder="address: 0x…, rsp, a symbol, ma:0x…, pfn:N", id="memory-address")
        yield Static("", id="memory-dump")

    def watch_view(self, view: View | None) -> None:
        if view is not None:
            self.query_one("#memory-dump", Static).update(render_memory(view))

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        if event.value.strip():
            self.post_message(PageWalkView.AddressRequested("memory", event.value.strip()))

"""Page walk: how the CPU translates one guest-virtual address through the current page tables,
level by level (index, entry, frame, flags), and the machine address it reaches."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.message import Message
from textual.reactive import reactive
from textual.widgets import Input, Static

from xendbg.fast.walk import WALK_BAD_FRAME, WALK_NONCANONICAL, WALK_NOT_PRESENT, WALK_OK
from xendbg.machine.domain import INVALID_MFN
from xendbg.messages import View
from xendbg.views.fmt import hexw, owner_name

_FLAGS = ((0, "P"), (1, "RW"), (2, "US"), (3, "PWT"), (4, "PCD"), (5, "A"), (6, "D"), (7, "PS"),
          (8, "G"), (63, "NX"))
_FAILED = {WALK_NOT_PRESENT: "not mapped (an entry is not present)",
           WALK_BAD_FRAME: "an entry points outside machine memory",
           WALK_NONCANONICAL: "not a canonical address"}


def flags(entry: int) -> str:
    return " ".join(name for bit, name in _FLAGS if entry >> bit & 1) or "-"


def render_walk(view: View) -> Text:
    snap = view.snap
    w = snap.walk
    out = Text(no_wrap=True, overflow="ellipsis")
    if w is None:
        out.append("enter an address (a number, a register such as rip, a symbol)", style="dim")
        return out
    label = view.session.label(w.va)
    out.append(f"walk {hexw(w.va, snap.bits)}" + (f" <{label}>" if label else "") +
               f" from cr3 {w.cr3:#x}\n", style="bold")
    ft = snap.frames
    for level in w.levels:
        mfn = (level.entry >> 12) & 0xFFFFFFFFFF
        out.append(f"  {level.name:<3} [{level.index:3d}] {level.entry:#018x}  ")
        if not level.entry & 1:
            out.append("not present\n", style="dim")
            continue
        out.append(f"mfn {mfn:#x}")
        if ft is not None and ft.valid_mfn(mfn):
            owner = int(ft.owner[mfn])
            pfn = int(ft.m2p[mfn])
            if owner == ft.domid and pfn < len(ft.p2m) and int(ft.p2m[pfn]) != INVALID_MFN:
                out.append(f" (pfn {pfn:#x})")
            else:
                out.append(f" ({owner_name(owner, ft.domid)})", style="bold red")
            if ft.page_type is not None:
                t = int(ft.page_type[mfn])
                out.append(f" {ft.type_names.get(t, hex(t))}×{int(ft.type_count[mfn])}")
        out.append(f"  [{flags(level.entry)}]\n")
    if w.status == WALK_OK:
        rw = "writable" if w.perms & 1 else "read-only"
        user = "user" if w.perms & 2 else "supervisor"
        nx = "executable" if w.perms & 4 else "no-execute"
        out.append(f"  → ma {w.ma:#x} (mfn {w.ma >> 12:#x}), {rw}, {user}, {nx}\n", style="bold")
    else:
        out.append(f"  → {_FAILED.get(w.status, 'fault')}\n", style="bold red")
    return out


class PageWalkView(Vertical):
    view: reactive[View | None] = reactive(None, init=False)

    class AddressRequested(Message):
        """Walk (or show memory at) the address expression ``text``."""

        def __init__(self, what: str, text: str) -> None:
            super().__init__()
            self.what = what
            self.text = text

    def compose(self) -> ComposeResult:
        yield Input(placeholder="address to walk: 0x…, rip, a symbol", id="walk-address")
        yield Static("", id="walk-result")

    def watch_view(self, view: View | None) -> None:
        if view is not None:
            self.query_one("#walk-result", Static).update(render_walk(view))

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        if event.value.strip():
            self.post_message(self.AddressRequested("walk", event.value.strip()))

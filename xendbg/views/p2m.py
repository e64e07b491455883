"""pfn → mfn: every page of the guest with its machine frame, owner and (where the MMU keeps them)
page type, type count, reference count and pin. Line API: 65536 rows cost what 30 do.

Jump with the box above the table: ``pfn N``, ``mfn N`` or a bare number (a pfn). Moving the
cursor selects that frame for the page-types panel (:class:`P2mTable.FrameSelected`).
"""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Vertical
from textual.message import Message
from textual.reactive import reactive
from textual.widgets import Input

from xendbg.machine.domain import INVALID_MFN
from xendbg.messages import View
from xendbg.views.fmt import owner_name
from xendbg.views.lines import Cell, LineTable, TextLine


class P2mTable(LineTable):
    columns = (("pfn", 8), ("mfn", 8), ("owner", 6), ("type", 11), ("tcount", 6), ("count", 6),
               ("pinned", 6), ("m2p", 8))

    view: reactive[View | None] = reactive(None, init=False)

    class FrameSelected(Message):
        def __init__(self, pfn: int, mfn: int | None) -> None:
            super().__init__()
            self.pfn = pfn
            self.mfn = mfn

    def row_count(self) -> int:
        view = self.view
        if view is None or view.snap.frames is None:
            return 0
        return len(view.snap.frames.p2m)

    def row_cells(self, pfn: int) -> list[Cell]:
        view = self.view
        ft = view.snap.frames
        before = view.before.frames if view.before is not None else None
        if before is not None and len(before.p2m) != len(ft.p2m):
            before = None
        mfn = int(ft.p2m[pfn])
        cells: list[Cell] = [(f"{pfn:x}", None)]
        if mfn == INVALID_MFN or not ft.valid_mfn(mfn):
            return cells + [("-", "line-table--dim")]
        changed = "line-table--changed"
        moved = before is not None and int(before.p2m[pfn]) != mfn
        cells.append((f"{mfn:x}", changed if moved else None))
        owner = int(ft.owner[mfn])
        cells.append((owner_name(owner, ft.domid), None if owner == ft.domid else "line-table--error"))
        if ft.page_type is None:
            cells += [("(no MMU)", "line-table--dim"), ("", None), ("", None), ("", None)]
        else:
            def differs(name: str) -> bool:
                if before is None or moved:
                    return False
                old = getattr(before, name)
                return old is not None and old[mfn] != getattr(ft, name)[mfn]

            t = int(ft.page_type[mfn])
            cells.append((ft.type_names.get(t, f"{t:#x}"),
                          changed if differs("page_type") else None))
            cells.append((str(int(ft.type_count[mfn])),
                           changed if differs("type_count") else None))
            cells.append((str(int(ft.count[mfn])), changed if differs("count") else None))
            pinned = bool(ft.pinned[mfn])
            cells.append(("pinned" if pinned else "", changed if differs("pinned") else None))
        back = int(ft.m2p[mfn])
        cells.append((f"{back:x}" if back == pfn else f"!{back:x}",
                      None if back == pfn else "line-table--error"))
        return cells

    def watch_view(self, view: View | None) -> None:
        self.rows_changed()

    def watch_cursor(self, old: int, new: int) -> None:
        super().watch_cursor(old, new)
        view = self.view
        if view is not None and view.snap.frames is not None and new < len(view.snap.frames.p2m):
            mfn = int(view.snap.frames.p2m[new])
            self.post_message(self.FrameSelected(new, mfn if view.snap.frames.valid_mfn(mfn)
                                                 else None))

    def jump(self, text: str) -> str | None:
        """Move to ``pfn N``, ``mfn N`` or ``N``; an error message, or None."""
        view = self.view
        if view is None or view.snap.frames is None:
            return "no frame table yet"
        ft = view.snap.frames
        words = text.replace(":", " ").split()
        if not words:
            return None
        space = "pfn"
        if words[0] in ("pfn", "mfn"):
            space, words = words[0], words[1:]
        try:
            number = int(words[0], 0) if words else -1
        except ValueError:
            try:
                number = int(words[0], 16)
            except ValueError:
                return f"not a number: {words[0]!r}"
        if space == "mfn":
            if not ft.valid_mfn(number):
                return f"mfn {number:#x} is outside machine memory ({ft.nr_frames} frames)"
            if int(ft.owner[number]) != ft.domid:
                return f"mfn {number:#x} belongs to {owner_name(int(ft.owner[number]), ft.domid)}" \
                       ", not to the guest: no pfn maps it"
            number = int(ft.m2p[number])
        if not 0 <= number < len(ft.p2m):
            return f"pfn {number:#x} is outside the guest's {len(ft.p2m)} pages"
        self.move_cursor(number, center=True)
        return None


class P2mView(Vertical):
    """The jump box, the table, and one line of totals."""

    view: reactive[View | None] = reactive(None, init=False)

    def compose(self) -> ComposeResult:
        yield Input(placeholder="jump: pfn N | mfn N", id="p2m-jump")
        yield TextLine("", id="p2m-summary")
        yield P2mTable(id="p2m-table")

    def watch_view(self, view: View | None) -> None:
        if view is None or view.snap.frames is None:
            return
        self.query_one(P2mTable).view = view
        ft = view.snap.frames
        pages = len(ft.p2m)
        text = f"{pages} pages, {ft.nr_frames} machine frames"
        if ft.page_type is None:
            text += "; page types: the MMU keeps none yet"
        self.query_one("#p2m-summary", TextLine).set(text)

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        error = self.query_one(P2mTable).jump(event.value)
        if error:
            self.notify(error, severity="warning")
        else:
            self.query_one(P2mTable).focus()

"""Page types and pins: how many of the guest's frames are in use as each type, how many are
pinned, and the selected frame (the pfn→mfn cursor) with the MMU's and the debugger's history."""

from __future__ import annotations

import numpy as np
from rich.text import Text

from xendbg.messages import View
from xendbg.views.panel import SnapshotPanel


def type_counts(view: View) -> list[tuple[str, int, int]] | None:
    """(type name, frames with a type reference, of which pinned) for the guest's frames."""
    ft = view.snap.frames
    if ft is None or ft.page_type is None:
        return None
    owned = ft.owner == ft.domid
    in_use = owned & (ft.type_count > 0)
    types = ft.page_type[in_use]
    pinned = ft.pinned[in_use]
    out = []
    for t in sorted(set(np.unique(types).tolist())):
        sel = types == t
        out.append((ft.type_names.get(int(t), f"{int(t):#x}"), int(sel.sum()),
                    int((pinned & sel).sum())))
    return out


class PageTypesView(SnapshotPanel):
    EMPTY = "page types appear at the next stop"

    def render_view(self, view: View) -> Text:
        out = Text(no_wrap=True, overflow="ellipsis")
        counts = type_counts(view)
        if view.snap.frames is None:
            out.append(self.EMPTY, style="dim")
            return out
        if counts is None:
            out.append("The machine's MMU keeps no page types yet: only owners are known.\n",
                       style="dim")
        else:
            out.append("frames in use, by type\n", style="underline")
            out.append(f"{'type':<12} {'frames':>8} {'pinned':>8}\n", style="bold")
            for name, n, pinned in counts:
                out.append(f"{name:<12} {n:>8} {pinned if pinned else '':>8}\n")
            ft = view.snap.frames
            owned = ft.owner == ft.domid
            out.append(f"{int(owned.sum())} frames owned by the guest, "
                       f"{int((ft.pinned & owned).sum())} pinned\n")
        frame = view.snap.frame
        if frame is None:
            out.append("\nselect a frame in the pfn→mfn panel to see its state and history",
                       style="dim")
            return out
        out.append(f"\nframe mfn {frame.mfn:#x}\n", style="bold")
        for key, value in frame.info:
            if key == "mfn":
                continue
            shown = f"{value:#x}" if isinstance(value, int) and not isinstance(value, bool) \
                and key in ("pfn", "owner") else str(value)
            out.append(f"  {key:<10} {shown}\n")
        history = list(frame.history) + [f"(debugger) {h}" for h in view.session.frame_history]
        out.append("history:\n" if history else "history: none recorded\n", style="bold")
        for line in history[-30:]:
            out.append(f"  {line}\n")
        return out

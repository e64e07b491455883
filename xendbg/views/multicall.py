"""The multicall queue: the batch the guest is stopped before (decoded from its memory), the last
batch Xen ran with each entry's decoded call and result, and the entries of the last
``finish-hypercall``."""

from __future__ import annotations

from rich.text import Text

from xendbg.messages import View
from xendbg.views.fmt import result_text
from xendbg.views.panel import SnapshotPanel


class MulticallView(SnapshotPanel):
    def render_view(self, view: View) -> Text:
        snap = view.snap
        out = Text(no_wrap=True, overflow="ellipsis")
        s = view.session
        if s.at_entry is not None and s.at_entry_name == "multicall":
            out.append("stopped before this batch (not run yet):\n", style="bold")
            for line in s.at_entry:
                out.append(f"  {line}\n")
        out.append(f"batches run so far: {snap.multicall_batches}\n", style="bold")
        if not snap.multicall_last:
            out.append("no batch yet\n", style="dim")
            return out
        fresh = view.before is None or view.before.multicall_batches != snap.multicall_batches
        out.append("last batch" + (" (new since the previous stop)" if fresh and view.before
                                   else "") + ":\n", style="bold")
        stepped = {index for index, _name, _r in s.finished_entries}
        for e in snap.multicall_last:
            args = ", ".join(f"{k}={v:#x}" for k, v in e.args)
            error = e.result is not None and -4096 < e.result < 0
            mark = "▶" if e.index in stepped else " "
            out.append(f"{mark}[{e.index}] ")
            out.append(f"{result_text(e.result):>12}", style="bold red" if error else "green")
            out.append("  ")
            out.append(e.name, style="bold")
            out.append(f"({args})\n")
        return out

"""Event channels: every open port with its binding, the vCPU it notifies, its pending and mask
bits (from shared_info) and, for a Linux guest, the IRQ it is bound to. Changes since the previous
stop are highlighted."""

from __future__ import annotations

from rich.text import Text

from xendbg.debugger.decode import VIRQ_NAMES
from xendbg.machine.snapshot import PortState
from xendbg.messages import View
from xendbg.views.panel import SnapshotPanel

CHANGED = "bold #ffb000"


def binding(p: PortState) -> str:
    if p.state == "virq":
        return f"VIRQ_{VIRQ_NAMES.get(p.virq, str(p.virq))}"
    if p.state == "interdomain":
        end = f"dom{p.remote_dom}:{p.remote_port}"
        return f"{end} ({p.backend})" if p.backend else end
    if p.state == "unbound":
        return f"for dom{p.remote_dom}"
    if p.state == "ipi":
        return "IPI"
    return ""


COLUMNS = (("port", 4, ">"), ("kind", 11, "<"), ("binding", 22, "<"), ("cpu", 3, ">"),
           ("pend", 4, "<"), ("mask", 4, "<"), ("irq", 4, ">"), ("sent", 7, ">"),
           ("raised", 7, ">"))


def _cell(text: str, width: int, align: str) -> str:
    text = text if len(text) <= width else text[:width - 1] + "…"
    return f"{text:{align}{width}}"


class EventChannelsView(SnapshotPanel):
    """One line per port, in fixed columns (plain text: cheap to draw several times a second)."""

    def render_view(self, view: View) -> Text:
        snap = view.snap
        before = {p.port: p for p in view.before.ports} if view.before is not None else {}
        out = Text(no_wrap=True, overflow="ellipsis")
        out.append(" ".join(_cell(name, w, a) for name, w, a in COLUMNS) + "\n", style="bold")
        for p in snap.ports:
            old = before.get(p.port)
            irq = view.session.irqs.get(p.port)
            cells = ((str(p.port), "port"), (p.state, "state"), (binding(p), "remote_port"),
                     (str(p.vcpu), "vcpu"), ("yes" if p.pending else "", "pending"),
                     ("yes" if p.masked else "", "masked"), ("" if irq is None else str(irq), ""),
                     (str(p.sends), "sends"), (str(p.raised), "raised"))
            for i, ((text, field), (_name, width, align)) in enumerate(zip(cells, COLUMNS,
                                                                          strict=True)):
                new_port = view.before is not None and old is None
                differs = bool(field) and old is not None and getattr(old, field) != \
                    getattr(p, field)
                if i:
                    out.append(" ")
                out.append(_cell(text, width, align), style=CHANGED if differs or new_port
                           else "")
            out.append("\n")
        if not snap.ports:
            out.append("no open ports\n", style="dim")
        if snap.stray_pending:
            out.append(f"pending bits on ports that are not open: "
                       f"{', '.join(map(str, snap.stray_pending))}\n", style="bold red")
        v = snap.vcpu
        out.append(f"vCPU 0: upcall pending {v.upcall_pending}, mask {v.upcall_mask}, "
                   f"pending_sel {v.pending_sel:#x}")
        return out

"""vcpu_info: the vCPU's shared state (event upcall pending and mask, the pending selector's bits,
the pvclock fields) and Xen's own per-vCPU state. Changes since the previous stop are highlighted."""

from __future__ import annotations

from rich.text import Text

from xendbg.machine.abi import xen as X
from xendbg.messages import View
from xendbg.views.fmt import changed, hexw
from xendbg.views.panel import SnapshotPanel

CHANGED = "bold #ffb000"


class VcpuInfoView(SnapshotPanel):
    def render_view(self, view: View) -> Text:
        v = view.snap.vcpu
        bits = view.snap.bits
        out = Text(no_wrap=True, overflow="ellipsis")

        def row(label: str, text: str, field: str | None = None) -> None:
            out.append(f"{label:<22}", style="bold")
            hot = field is not None and changed(view, lambda s: getattr(s.vcpu, field))
            out.append(text + "\n", style=CHANGED if hot else "")

        out.append("vcpu_info (in shared_info)\n", style="underline")
        row("evtchn_upcall_pending", str(v.upcall_pending), "upcall_pending")
        row("evtchn_upcall_mask", f"{v.upcall_mask} ({'masked' if v.upcall_mask else 'enabled'})",
            "upcall_mask")
        sel_bits = [str(i) for i in range(bits) if v.pending_sel >> i & 1]
        row("evtchn_pending_sel", f"{v.pending_sel:#x}" + (f"  bits {','.join(sel_bits)}"
                                                          if sel_bits else ""), "pending_sel")
        row("arch.cr2", hexw(v.info_cr2, bits), "info_cr2")
        out.append("pvclock (vcpu_time_info)\n", style="underline")
        row("version", f"{v.time_version}{' (odd: being updated)' if v.time_version & 1 else ''}",
            "time_version")
        row("tsc_timestamp", str(v.tsc_timestamp), "tsc_timestamp")
        row("system_time", f"{v.system_time} ns", "system_time")
        row("tsc_to_system_mul", f"{v.tsc_to_system_mul:#x}", "tsc_to_system_mul")
        row("tsc_shift", str(v.tsc_shift), "tsc_shift")
        row("flags", f"{v.time_flags:#x}", "time_flags")
        out.append("Xen's vCPU state\n", style="underline")
        row("mode", f"{'kernel' if v.kernel_mode else 'user'}, "
                    f"{'blocked' if v.blocked else 'runnable'}", "blocked")
        row("cr3", f"{v.cr3:#x} (kernel table mfn {v.guest_table:#x}"
                   + (f", user {v.guest_table_user:#x})" if v.guest_table_user else ")"), "cr3")
        row("kernel stack", f"ss {v.kernel_ss:#x} sp {hexw(v.kernel_sp, bits)}", "kernel_sp")
        row("iopl / fpu_ts", f"{v.iopl} / {v.fpu_ts}")
        for kind, address in v.callbacks:
            row(f"callback {X.CALLBACK_NAMES.get(kind, kind)}", hexw(address, bits)
                + (f" <{view.session.label(address)}>" if view.session.label(address) else ""))
        if not v.callbacks:
            row("callbacks", "none registered")
        return out

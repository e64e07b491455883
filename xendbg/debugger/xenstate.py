"""Snapshots of Xen's state for one domain, and what changed between two of them.

``finish-hypercall`` takes one before the call and one after, and shows the difference: event
channel ports, vcpu_info (mask, pending, selector, time), the vCPU's registered state (trap table,
callbacks, kernel stack, page-table bases), the p2m and frame ownership, and timers. Frames whose
page *type* or pin changed come from the MMU's ``page_type`` events, collected while the call ran
(the session adds them); the snapshot itself holds no page types, so it keeps working whatever the
MMU's internals are.
"""

from __future__ import annotations

import struct

import numpy as np

from xendbg.machine.abi import layout as L
from xendbg.machine.events.evtchn import STATE_NAMES


def vcpu_info(m, vcpu=None) -> dict:
    """The guest-visible vcpu_info fields of ``vcpu`` (default: vCPU 0)."""
    v = vcpu or m.vcpu
    base = v.vcpu_info_ma
    word = m.abi.word
    raw = m.memory.read(base, L.VCPU_INFO_SIZE)
    t = m.abi.vcpu_time
    version, _pad, tsc_ts, sys_time, mul, shift, flags = struct.unpack_from("<IIQQIbB", raw, t)
    return {
        "evtchn_upcall_pending": raw[0],
        "evtchn_upcall_mask": raw[1],
        "evtchn_pending_sel": int.from_bytes(raw[m.abi.vcpu_pending_sel:m.abi.vcpu_pending_sel + word],
                                             "little"),
        "arch.cr2": int.from_bytes(raw[m.abi.vcpu_cr2:m.abi.vcpu_cr2 + word], "little"),
        "time.version": version,
        "time.tsc_timestamp": tsc_ts,
        "time.system_time": sys_time,
        "time.tsc_to_system_mul": mul,
        "time.tsc_shift": shift,
        "time.flags": flags,
    }


def port_rows(m) -> dict[int, dict]:
    """Every open port with its state and its pending/mask bits."""
    out = {}
    delivery = m.evtchn.delivery
    for port, chan in sorted(m.evtchn.ports.items()):
        out[port] = {
            "state": STATE_NAMES.get(chan.state, str(chan.state)), "vcpu": chan.vcpu,
            "remote_dom": chan.remote_dom, "remote_port": chan.remote_port, "virq": chan.virq,
            "backend": chan.backend, "pending": delivery.is_pending(port),
            "masked": delivery.is_masked(port), "sends": chan.sends, "raised": chan.raised,
        }
    return out


def snapshot(m) -> dict:
    v = m.vcpu
    d = m.domain
    return {
        "ports": {p: {k: r[k] for k in ("state", "vcpu", "remote_port", "virq", "pending", "masked",
                                        "sends", "raised")}
                  for p, r in port_rows(m).items()},
        "vcpu_info": vcpu_info(m),
        "vcpu": {
            "kernel_mode": v.kernel_mode, "blocked": v.blocked,
            "guest_table": v.guest_table, "guest_table_user": v.guest_table_user,
            "kernel_ss": v.kernel_ss, "kernel_sp": v.kernel_sp, "iopl": v.iopl,
            "fpu_ts": v.fpu_ts, "fs_base": v.fs_base, "gs_base_kernel": v.gs_base_kernel,
            "gs_base_user": v.gs_base_user, "ldt": (v.ldt_base, v.ldt_entries),
            "gdt_frames": tuple(v.gdt_frames),
            "trap_table": tuple(sorted((t.vector, t.flags, t.cs, t.address)
                                       for t in v.trap_table.values())),
            "callbacks": tuple(sorted((k, c.address, c.flags) for k, c in v.callbacks.items())),
        },
        "domain": {"vm_assist": d.vm_assist, "shutdown": d.shutdown and d.shutdown.name,
                   "crashed": d.crashed},
        "p2m": np.array(d.p2m, copy=True),
        "owner": np.array(m.memory.owner, copy=True),
        "next_timer": m.clock.next_deadline(),
    }


def _fmt(value) -> str:
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, int):
        return f"{value:#x}" if value > 9 else str(value)
    return str(value)


def diff(before: dict, after: dict) -> list[str]:
    """Human lines for everything that differs; empty when nothing changed."""
    lines: list[str] = []
    bp, ap = before["ports"], after["ports"]
    for port in sorted(set(bp) | set(ap)):
        old, new = bp.get(port), ap.get(port)
        if old == new:
            continue
        if old is None:
            lines.append(f"port {port}: opened ({new['state']}"
                         f"{', virq ' + str(new['virq']) if new['state'] == 'virq' else ''})")
        elif new is None:
            lines.append(f"port {port}: closed (was {old['state']})")
        else:
            changes = ", ".join(f"{k} {_fmt(old[k])} → {_fmt(new[k])}" for k in new if old[k] != new[k])
            lines.append(f"port {port}: {changes}")
    for group in ("vcpu_info", "vcpu", "domain"):
        for key, new in after[group].items():
            old = before[group][key]
            if old != new:
                if key in ("trap_table", "callbacks", "gdt_frames"):
                    lines.append(f"{group}.{key}: {len(old)} → {len(new)} entries")
                else:
                    lines.append(f"{group}.{key}: {_fmt(old)} → {_fmt(new)}")
    changed = np.nonzero(before["p2m"] != after["p2m"])[0] if len(before["p2m"]) == len(after["p2m"]) \
        else np.arange(max(len(before["p2m"]), len(after["p2m"])))
    for pfn in changed[:16].tolist():
        old = int(before["p2m"][pfn]) if pfn < len(before["p2m"]) else None
        new = int(after["p2m"][pfn]) if pfn < len(after["p2m"]) else None
        lines.append(f"p2m[{pfn:#x}]: {_fmt(old)} → {_fmt(new)}")
    if len(changed) > 16:
        lines.append(f"… {len(changed) - 16} more p2m entries changed")
    owners = np.nonzero(before["owner"] != after["owner"])[0]
    for mfn in owners[:16].tolist():
        lines.append(f"frame {mfn:#x}: owner {int(before['owner'][mfn])} → {int(after['owner'][mfn])}")
    if len(owners) > 16:
        lines.append(f"… {len(owners) - 16} more frames changed owner")
    if before["next_timer"] != after["next_timer"]:
        lines.append(f"next timer deadline (instruction count): {_fmt(before['next_timer'])} → "
                     f"{_fmt(after['next_timer'])}")
    return lines

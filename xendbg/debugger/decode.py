"""Hypercall decoders: what a call's arguments *point to*, read from guest memory, shown as data.

The hypercall table (``machine/hypercalls.py``) names each call's registers; this table, keyed by
the same names, reads the structures behind them — the ``mmu_update`` request list, the
``mmuext_op`` list, the ``multicall`` entries (each decoded in turn), the ``evtchn_*`` structs — so
that ``step-hypercall`` can show a call before Xen runs it. A decoder only reads, through the
machine's checked guest accessor: an unreadable pointer is shown as such, never raised.

Each decoder returns a :class:`Decoded`: one summary line, detail lines, and the same as plain data
(for tests and the TUI).
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass, field

from xendbg.machine import hypercalls
from xendbg.machine.abi import xen as X
from xendbg.machine.memory import PAGE_SHIFT

MAX_SHOWN = 32            # entries of a list shown before "… N more"


def _names(prefix: str) -> dict[int, str]:
    return {v: k[len(prefix):] for k, v in vars(X).items()
            if k.startswith(prefix) and isinstance(v, int)}


MMUEXT_NAMES = _names("MMUEXT_")
MMU_NAMES = _names("MMU_")
EVTCHNOP_NAMES = _names("EVTCHNOP_")
SCHEDOP_NAMES = _names("SCHEDOP_")
XENMEM_NAMES = _names("XENMEM_")
VCPUOP_NAMES = _names("VCPUOP_")
GNTTABOP_NAMES = _names("GNTTABOP_")
XENVER_NAMES = _names("XENVER_")
VIRQ_NAMES = _names("VIRQ_")
CONSOLEIO_NAMES = _names("CONSOLEIO_")
PIN_LEVEL = {X.MMUEXT_PIN_L1_TABLE: 1, X.MMUEXT_PIN_L2_TABLE: 2, X.MMUEXT_PIN_L3_TABLE: 3,
             X.MMUEXT_PIN_L4_TABLE: 4}


@dataclass
class Decoded:
    summary: str
    lines: list[str] = field(default_factory=list)
    data: dict = field(default_factory=dict)

    def text(self) -> str:
        return "\n".join([self.summary, *("  " + line for line in self.lines)])


def pte_text(m, value: int) -> str:
    """A page-table entry: its frame (with the pfn the M2P gives) and flags."""
    flags = []
    for bit, name in ((0, "P"), (1, "RW"), (2, "US"), (3, "PWT"), (4, "PCD"), (5, "A"), (6, "D"),
                      (7, "PSE"), (8, "G"), (63, "NX")):
        if value >> bit & 1:
            flags.append(name)
    mfn = (value >> PAGE_SHIFT) & 0xFFFFFFFFFF
    return f"mfn {mfn:#x}{pfn_note(m, mfn)} [{' '.join(flags) or '-'}]"


def pfn_note(m, mfn: int) -> str:
    """`` (pfn 0x…)`` when the M2P names one for ``mfn``, ``(not the guest's)`` otherwise."""
    if not m.memory.is_valid_mfn(mfn):
        return " (no such frame)"
    if not m.owns_frame(mfn):
        return " (not the guest's)"
    pfn = int(m.layout.m2p[mfn])
    return f" (pfn {pfn:#x})"


class _Reader:
    def __init__(self, m) -> None:
        self.m = m
        self.word = m.abi.word

    def read(self, va: int, n: int) -> bytes | None:
        return self.m.guest.read(va, n)

    def words(self, va: int, count: int) -> tuple[int, ...] | None:
        raw = self.read(va, count * self.word)
        if raw is None:
            return None
        return struct.unpack(f"<{count}{'Q' if self.word == 8 else 'I'}", raw)


def _list(lines: list[str], count: int, what: str) -> None:
    if count > MAX_SHOWN:
        lines.append(f"… {count - MAX_SHOWN} more {what}")


def _unreadable(va: int) -> str:
    return f"<unreadable guest memory at {va:#x}>"


# -- the decoders -----------------------------------------------------------------------------------

def decode_mmu_update(m, a: dict) -> Decoded:
    req, count = a["req"], a["count"]
    count_real = count & ~(1 << 31)       # MMU_UPDATE_PREEMPTED
    out = Decoded(f"{count_real} request(s) at {req:#x}", data={"requests": []})
    for i in range(min(count_real, MAX_SHOWN)):
        raw = m.guest.read(req + 16 * i, 16)
        if raw is None:
            out.lines.append(_unreadable(req + 16 * i))
            break
        ptr, val = struct.unpack("<QQ", raw)
        cmd = ptr & 3
        name = MMU_NAMES.get(cmd, str(cmd))
        ma = ptr & ~3
        entry = {"cmd": name, "ptr": ptr, "val": val}
        if cmd == X.MMU_MACHPHYS_UPDATE:
            mfn = ma >> PAGE_SHIFT
            entry["mfn"] = mfn
            out.lines.append(f"[{i}] {name}: m2p[{mfn:#x}] = pfn {val:#x}")
        else:
            mfn = ma >> PAGE_SHIFT
            index = (ma & 0xFFF) // 8
            entry.update(mfn=mfn, index=index)
            out.lines.append(f"[{i}] {name}: table mfn {mfn:#x}{pfn_note(m, mfn)} entry {index} "
                             f"= {val:#x} ({pte_text(m, val)})")
        out.data["requests"].append(entry)
    _list(out.lines, count_real, "requests")
    return out


def decode_mmuext_op(m, a: dict) -> Decoded:
    ops, count = a["op"], a["count"] & ~(1 << 31)
    size = m.abi.mmuext_op_size
    r = _Reader(m)
    out = Decoded(f"{count} op(s) at {ops:#x}", data={"ops": []})
    for i in range(min(count, MAX_SHOWN)):
        raw = r.read(ops + size * i, size)
        if raw is None:
            out.lines.append(_unreadable(ops + size * i))
            break
        if m.abi.word == 8:
            cmd, arg1, arg2 = struct.unpack("<I4xQQ", raw)
        else:
            cmd, arg1, arg2 = struct.unpack("<III", raw)
        name = MMUEXT_NAMES.get(cmd, f"cmd {cmd}")
        entry: dict = {"cmd": name, "arg1": arg1, "arg2": arg2}
        if cmd in PIN_LEVEL or cmd in (X.MMUEXT_UNPIN_TABLE, X.MMUEXT_NEW_BASEPTR,
                                        X.MMUEXT_NEW_USER_BASEPTR, X.MMUEXT_CLEAR_PAGE,
                                        X.MMUEXT_MARK_SUPER, X.MMUEXT_UNMARK_SUPER):
            entry["mfn"] = arg1
            text = f"mfn {arg1:#x}{pfn_note(m, arg1)}"
        elif cmd == X.MMUEXT_COPY_PAGE:
            entry.update(mfn=arg1, src_mfn=arg2)
            text = f"mfn {arg1:#x} ← src mfn {arg2:#x}"
        elif cmd in (X.MMUEXT_INVLPG_LOCAL, X.MMUEXT_INVLPG_ALL, X.MMUEXT_INVLPG_MULTI):
            entry["va"] = arg1
            text = f"va {arg1:#x}"
        elif cmd == X.MMUEXT_SET_LDT:
            entry.update(va=arg1, nr_ents=arg2)
            text = f"va {arg1:#x} nr_ents {arg2}"
        else:
            text = ""
        out.data["ops"].append(entry)
        out.lines.append(f"[{i}] {name} {text}".rstrip())
    _list(out.lines, count, "ops")
    return out


def decode_update_va_mapping(m, a: dict) -> Decoded:
    flags = a["flags"]
    kind = {X.UVMF_NONE: "no flush", X.UVMF_TLB_FLUSH: "TLB flush", X.UVMF_INVLPG: "invlpg"}.get(
        flags & X.UVMF_FLUSHTYPE_MASK, "?")
    val = a["val"]
    return Decoded(f"va {a['va']:#x} := {val:#x} ({pte_text(m, val)}), {kind}"
                   f"{', all vCPUs' if flags & X.UVMF_ALL else ''}",
                   data={"va": a["va"], "val": val, "flags": flags})


def decode_multicall(m, a: dict) -> Decoded:
    call_list, nr = a["call_list"], a["nr_calls"]
    size = m.abi.multicall_entry_size
    r = _Reader(m)
    out = Decoded(f"{nr} entr{'y' if nr == 1 else 'ies'} at {call_list:#x}", data={"entries": []})
    for i in range(min(nr, MAX_SHOWN)):
        w = r.words(call_list + size * i, 8)
        if w is None:
            out.lines.append(_unreadable(call_list + size * i))
            break
        op, _result, *args = w
        d = hypercalls.BY_NR.get(op)
        name = hypercalls.name_of(op)
        names = d.args_for(m.abi.bits) if d else ()
        named = dict(zip(names, args, strict=False))
        shown = ", ".join(f"{k}={v:#x}" for k, v in named.items())
        out.lines.append(f"[{i}] {name}({shown})")
        sub = decode_call(m, name, named, depth=1)
        entry = {"op": op, "name": name, "args": named}
        if sub is not None:
            entry["decoded"] = sub.data
            out.lines.append("    " + sub.summary)
            out.lines.extend("    " + line for line in sub.lines)
        out.data["entries"].append(entry)
    _list(out.lines, nr, "entries")
    return out


def _evtchn_struct(cmd: int) -> tuple[str, list[str]] | None:
    """struct layout (struct format, field names) of each EVTCHNOP argument."""
    return {
        X.EVTCHNOP_send: ("<I", ["port"]),
        X.EVTCHNOP_close: ("<I", ["port"]),
        X.EVTCHNOP_unmask: ("<I", ["port"]),
        X.EVTCHNOP_bind_virq: ("<III", ["virq", "vcpu", "port"]),
        X.EVTCHNOP_bind_ipi: ("<II", ["vcpu", "port"]),
        X.EVTCHNOP_alloc_unbound: ("<HHI", ["dom", "remote_dom", "port"]),
        X.EVTCHNOP_bind_interdomain: ("<H2xII", ["remote_dom", "remote_port", "local_port"]),
        X.EVTCHNOP_bind_vcpu: ("<II", ["port", "vcpu"]),
        X.EVTCHNOP_status: ("<H2xI", ["dom", "port"]),
        X.EVTCHNOP_reset: ("<H", ["dom"]),
    }.get(cmd)


def decode_evtchn(m, cmd: int, arg: int) -> Decoded:
    name = EVTCHNOP_NAMES.get(cmd, f"cmd {cmd}")
    layout = _evtchn_struct(cmd)
    if layout is None:
        return Decoded(f"EVTCHNOP_{name} arg {arg:#x}", data={"cmd": name})
    fmt, fields = layout
    raw = m.guest.read(arg, struct.calcsize(fmt))
    if raw is None:
        return Decoded(f"EVTCHNOP_{name} {_unreadable(arg)}", data={"cmd": name})
    values = dict(zip(fields, struct.unpack(fmt, raw), strict=True))
    if "virq" in values:
        values_shown = {**values, "virq": f"{values['virq']} (VIRQ_{VIRQ_NAMES.get(values['virq'], '?')})"}
    else:
        values_shown = values
    text = " ".join(f"{k}={v}" for k, v in values_shown.items())
    return Decoded(f"EVTCHNOP_{name} {{{text}}}", data={"cmd": name, **values})


def decode_event_channel_op(m, a: dict) -> Decoded:
    return decode_evtchn(m, a["cmd"], a["arg"])


def decode_event_channel_op_compat(m, a: dict) -> Decoded:
    raw = m.guest.read(a["op"], 4)
    if raw is None:
        return Decoded(_unreadable(a["op"]))
    return decode_evtchn(m, struct.unpack("<I", raw)[0], a["op"] + 4)


def decode_set_trap_table(m, a: dict) -> Decoded:
    size, off = m.abi.trap_info_size, m.abi.trap_info_address
    out = Decoded(f"trap table at {a['traps']:#x}", data={"traps": []})
    for i in range(256):
        raw = m.guest.read(a["traps"] + i * size, size)
        if raw is None:
            out.lines.append(_unreadable(a["traps"] + i * size))
            break
        vector, flags, cs = struct.unpack_from("<BBH", raw)
        address = int.from_bytes(raw[off:off + m.abi.word], "little")
        if address == 0:
            break
        out.data["traps"].append({"vector": vector, "flags": flags, "cs": cs, "address": address})
        out.lines.append(f"vector {vector:#x} dpl {flags & 3}{' clear-IF' if flags & 4 else ''} "
                         f"cs {cs:#x} → {address:#x}")
    return out


def decode_console_io(m, a: dict) -> Decoded:
    cmd = CONSOLEIO_NAMES.get(a["cmd"], str(a["cmd"]))
    if a["cmd"] != X.CONSOLEIO_write:
        return Decoded(f"CONSOLEIO_{cmd} count {a['count']}", data={"cmd": cmd})
    raw = m.guest.read(a["buf"], min(a["count"], 256))
    text = _unreadable(a["buf"]) if raw is None else repr(raw.decode("utf-8", "replace"))
    more = " …" if a["count"] > 256 else ""
    return Decoded(f"CONSOLEIO_write {a['count']} bytes: {text}{more}", data={"cmd": cmd})


def decode_sched_op(m, a: dict) -> Decoded:
    cmd = SCHEDOP_NAMES.get(a["cmd"], str(a["cmd"]))
    if a["cmd"] == X.SCHEDOP_shutdown:
        raw = m.guest.read(a["arg"], 4)
        reason = None if raw is None else struct.unpack("<I", raw)[0]
        shown = "?" if reason is None else X.SHUTDOWN_NAMES.get(reason, str(reason))
        return Decoded(f"SCHEDOP_shutdown reason {shown}", data={"cmd": cmd, "reason": reason})
    return Decoded(f"SCHEDOP_{cmd}", data={"cmd": cmd})


def _cmd_only(table: dict[int, str], prefix: str, key: str = "cmd"
              ) -> Callable[[object, dict], Decoded]:
    def decode(m, a: dict) -> Decoded:
        name = table.get(a[key], str(a[key]))
        return Decoded(f"{prefix}{name}", data={key: name})
    return decode


def decode_callback_op(m, a: dict) -> Decoded:
    raw = m.guest.read(a["arg"], 8 + m.abi.word if m.abi.word == 8 else 16)
    if raw is None:
        return Decoded(_unreadable(a["arg"]))
    cbtype, flags = struct.unpack_from("<HH", raw)
    if m.abi.word == 8:
        address = struct.unpack_from("<Q", raw, 8)[0]
    else:
        address = struct.unpack_from("<I", raw, 8)[0]
    op = "register" if a["cmd"] == X.CALLBACKOP_register else "unregister"
    return Decoded(f"CALLBACKOP_{op} {X.CALLBACK_NAMES.get(cbtype, cbtype)} → {address:#x}"
                   f"{' mask-events' if flags & 1 else ''}",
                   data={"type": cbtype, "address": address, "flags": flags})


def decode_set_timer_op(m, a: dict) -> Decoded:
    t = a["timeout"]
    return Decoded("cancel the timer" if t == 0 else f"timer at system time {t} ns",
                   data={"timeout": t})


DECODERS: dict[str, Callable[[object, dict], Decoded]] = {
    "mmu_update": decode_mmu_update,
    "mmuext_op": decode_mmuext_op,
    "update_va_mapping": decode_update_va_mapping,
    "multicall": decode_multicall,
    "event_channel_op": decode_event_channel_op,
    "event_channel_op_compat": decode_event_channel_op_compat,
    "set_trap_table": decode_set_trap_table,
    "console_io": decode_console_io,
    "sched_op": decode_sched_op,
    "callback_op": decode_callback_op,
    "set_timer_op": decode_set_timer_op,
    "memory_op": _cmd_only(XENMEM_NAMES, "XENMEM_"),
    "vcpu_op": _cmd_only(VCPUOP_NAMES, "VCPUOP_"),
    "grant_table_op": _cmd_only(GNTTABOP_NAMES, "GNTTABOP_"),
    "xen_version": _cmd_only(XENVER_NAMES, "XENVER_"),
}


def decode_call(m, name: str, args: dict, depth: int = 0) -> Decoded | None:
    """Decode one call's pointed-to memory; None if there is no decoder for it (or it is a
    multicall inside a multicall, which Xen refuses anyway)."""
    decoder = DECODERS.get(name)
    if decoder is None or (depth and name == "multicall"):
        return None
    try:
        return decoder(m, args)
    except KeyError:          # the table row names its arguments differently (32-bit ABI)
        return None


def describe_call(m, name: str, args: dict) -> Decoded:
    """The call line ``name(arg=…, …)`` followed by what the arguments point to."""
    shown = ", ".join(f"{k}={v:#x}" for k, v in args.items())
    head = f"{name}({shown})"
    sub = decode_call(m, name, args)
    if sub is None:
        return Decoded(head, data={"name": name, "args": args})
    return Decoded(head, [sub.summary, *sub.lines], {"name": name, "args": args, **sub.data})

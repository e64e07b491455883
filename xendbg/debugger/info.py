"""Inspection: ``info TOPIC`` (``x``, ``disassemble``, ``walk``, ``backtrace`` are in :mod:`.examine`).

Every view reads the machine's own data structures (the domain, the vCPU, its trap table and
callbacks, the event channels, xenstore, the console, the p2m and M2P, the boot layout). Where a
mechanism keeps no state in the machine (the MMU's page types, timers, grant tables may be absent in a
given build), the view says "not available yet" rather than showing something made up.
"""

from __future__ import annotations

import dataclasses
import struct
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone

from xendbg.debugger import xenstate
from xendbg.debugger.decode import VIRQ_NAMES
from xendbg.debugger.examine import NOT_YET, frame_state, frame_state_text
from xendbg.debugger.memview import Address, DebugError, parse_int, read, read_word
from xendbg.debugger.session import CommandResult, Session
from xendbg.machine import hypercalls
from xendbg.machine.abi import xen as X
from xendbg.machine.memory import PAGE_SHIFT
from xendbg.machine.traps import vector_name
from xendbg.machine.xenarea import FIRST_RESERVED_GDT_ENTRY


@dataclass(frozen=True)
class Topic:
    name: str
    usage: str
    summary: str
    help: str
    handler: Callable[[Session, str], str | tuple[str, object]]


def cmd_info(s: Session, rest: str) -> CommandResult:
    name, _, args = rest.strip().partition(" ")
    if not name:
        raise DebugError("info what? topics: " + ", ".join(TOPICS))
    topic = TOPICS.get(ALIASES.get(name, name))
    if topic is None:
        raise DebugError(f"no info topic {name!r}; topics: {', '.join(TOPICS)}")
    out = topic.handler(s, args.strip())
    if isinstance(out, tuple):
        return CommandResult(True, out[0], out[1])
    return CommandResult(True, out)


def _owner_name(m, owner: int) -> str:
    if owner == m.domain.domid:
        return f"dom{owner} (the guest)"
    if owner == X.DOMID_XEN:
        return "Xen"
    if owner == X.DOMID_INVALID:
        return "free"
    return f"dom{owner}"


def info_frame(s: Session, args: str):
    m = s.m
    if not args:
        raise DebugError("usage: info frame MFN (or pfn:PFN)")
    if args.startswith("pfn:"):
        pfn = parse_int(args[4:], "pfn")
        mfn = m.domain.pfn_to_mfn(pfn)
    else:
        mfn = parse_int(args.removeprefix("mfn:"), "mfn")
    if not m.memory.is_valid_mfn(mfn):
        raise DebugError(f"mfn {mfn:#x} is outside machine memory ({m.memory.nr_frames} frames)")
    owner = int(m.memory.owner[mfn])
    lines = [f"frame mfn {mfn:#x} (ma {mfn << PAGE_SHIFT:#x})", f"owner: {_owner_name(m, owner)}"]
    pfn = int(m.layout.m2p[mfn])
    if owner == m.domain.domid and pfn < len(m.domain.p2m):
        back = m.domain.pfn_to_mfn(pfn)
        ok = "consistent" if back == mfn else f"INCONSISTENT: p2m[{pfn:#x}] = {back:#x}"
        lines.append(f"M2P: pfn {pfn:#x} ({ok})")
    for region in m.layout.regions:
        if region.pfn <= pfn < region.pfn + region.pages and owner == m.domain.domid:
            lines.append(f"role: {region.name} page {pfn - region.pfn} (va "
                         f"{region.va + ((pfn - region.pfn) << PAGE_SHIFT):#x})")
    roles = _special_frames(m)
    if mfn in roles:
        lines.append(f"role: {roles[mfn]}")
    lines.append(frame_state_text(m, mfn))
    recorded = s.frame_history.get(mfn, [])
    mmu_history = getattr(getattr(m.mmu, "history", None), "of_frame", None)
    if callable(mmu_history):      # the MMU's own records replace the events the session saw
        entries = [(n, t) for n, kind, t in recorded if kind == "call"]
        for r in mmu_history(mfn):
            change = f" {r.old} → {r.new}" if r.old or r.new else ""
            entries.append((r.insns, f"MMU {r.kind}{change}: {r.why} (at {s.fmt(r.ip)})"))
    else:
        entries = [(n, t) for n, _kind, t in recorded]
    entries.sort(key=lambda e: e[0])
    history = [f"insn {n}: {t}" for n, t in entries]
    lines.append("history:" if history else "history: none recorded")
    lines += ["  " + h for h in history[-30:]]
    return "\n".join(lines), {"mfn": mfn, "owner": owner, "state": frame_state(m, mfn),
                              "history": list(history)}


def _special_frames(m) -> dict[int, str]:
    roles = {}
    area = m.xen_area
    for i, mfn in enumerate(area.m2p_mfns):
        roles[mfn] = f"Xen: M2P frame {i}"
    roles[area.gdt_reserved_mfn] = "Xen: the reserved GDT page"
    roles[area.zero_mfn] = "Xen: zero page (GDT filler)"
    roles[area.gdt_l1_mfn] = "Xen: L1 mapping the GDT"
    roles[m.domain.shared_info_mfn] = "shared_info"
    for level, mfn in m.layout.pt_frames:
        roles.setdefault(mfn, f"bootstrap page table, L{level}")
    v = m.vcpu
    if v.guest_table:
        roles[v.guest_table] = roles.get(v.guest_table, "") + " (vCPU's current top-level table)"
    for i, mfn in enumerate(v.gdt_frames):
        roles[mfn] = f"GDT frame {i} (set_gdt)"
    return {k: r.strip() for k, r in roles.items()}


# -- the topics -------------------------------------------------------------------------------------------

def info_registers(s: Session, args: str):
    m = s.m
    regs = m.cpu.regs()
    lines = []
    for name, value in regs.items():
        sym = s.symbols.name_of(value) if name in ("rip", "eip") else None
        lines.append(f"{name:<7}{value:#018x}" + (f"  <{sym}>" if sym else ""))
    v = m.vcpu
    lines.append(f"cr0    {m.cr0_view():#x}   cr2 {v.cr2:#x}   cr3 {m.cpu.cr3:#x} "
                 f"(mfn {m.abi.cr3_to_mfn(m.cpu.cr3) if m.is64 else m.cpu.cr3 >> 12:#x})")
    mode = "kernel" if v.kernel_mode else "user"
    lines.append(f"guest mode {mode}, CPL {m.cpu.cpl()}, instructions executed {m.insns}")
    if m.is64:
        lines.append(f"fs_base {v.fs_base:#x}  gs_base kernel {v.gs_base_kernel:#x} "
                     f"user {v.gs_base_user:#x}")
    return "\n".join(lines), regs


def info_breakpoints(s: Session, args: str):
    rows = s.breakpoints.listed()
    if not rows:
        return "No breakpoints or watchpoints.", []
    lines = ["Num  Type        Enb  Hits  What"]
    for bp in rows:
        lines.append(f"{bp.number:<4} {bp.kind:<11} {'y' if bp.enabled else 'n':<4} {bp.hits:<5} "
                     f"{bp.describe()}")
    return "\n".join(lines), [{"number": b.number, "kind": b.kind, "hits": b.hits,
                               "enabled": b.enabled, "what": b.describe()} for b in rows]


def info_symbol(s: Session, args: str):
    if not args:
        raise DebugError("usage: info symbol NAME|ADDRESS")
    sym = s.symbols.resolve(args)
    if sym is not None:
        size = f", size {sym.size:#x}" if sym.size else ""
        return (f"{sym.name} = {sym.address:#x} (type {sym.type}, from {sym.source}{size})",
                {"name": sym.name, "address": sym.address, "source": sym.source})
    from xendbg.debugger.memview import evaluate
    value = evaluate(s.m, s.symbols, args)
    name = s.symbols.name_of(value)
    if name is None:
        return f"No symbol matches {args} ({value:#x}).", {"address": value, "name": None}
    return f"{value:#x} is {name}", {"address": value, "name": name}


def info_vcpu(s: Session, args: str):
    m = s.m
    v = m.vcpu
    vi = xenstate.vcpu_info(m)
    pending = m.evtchn.delivery.pending_ports()
    lines = [f"vcpu {v.vcpu_id}: {'online' if v.online else 'offline'}, "
             f"{'kernel' if v.kernel_mode else 'user'} mode, "
             f"{'blocked' if v.blocked else 'runnable'}",
             "vcpu_info (shared_info):",
             f"  evtchn_upcall_pending {vi['evtchn_upcall_pending']}   "
             f"evtchn_upcall_mask {vi['evtchn_upcall_mask']} "
             f"({'events masked' if vi['evtchn_upcall_mask'] else 'events enabled'})",
             f"  evtchn_pending_sel {vi['evtchn_pending_sel']:#x}",
             f"  arch.cr2 {vi['arch.cr2']:#x}",
             f"  time: version {vi['time.version']} tsc_timestamp {vi['time.tsc_timestamp']} "
             f"system_time {vi['time.system_time']} mul {vi['time.tsc_to_system_mul']:#x} "
             f"shift {vi['time.tsc_shift']} flags {vi['time.flags']:#x}",
             f"pending ports: {pending or 'none'}",
             f"page tables: kernel mfn {v.guest_table:#x}, user mfn {v.guest_table_user:#x}",
             f"kernel stack (stack_switch): ss {v.kernel_ss:#x} sp {s.fmt(v.kernel_sp)}",
             f"iopl {v.iopl}, fpu_ts {v.fpu_ts}, virtual TSC {m.read_tsc()}"]
    return "\n".join(lines), {**vi, "pending_ports": pending, "blocked": v.blocked,
                              "kernel_mode": v.kernel_mode}


def info_evtchn(s: Session, args: str):
    rows = xenstate.port_rows(s.m)
    if not rows:
        return "No event channels.", {}
    lines = ["port  state        vcpu  detail                     pending masked  sends raised"]
    for port, r in rows.items():
        if r["state"] == "virq":
            detail = f"virq {r['virq']} (VIRQ_{VIRQ_NAMES.get(r['virq'], '?')})"
        elif r["state"] == "interdomain":
            detail = f"dom{r['remote_dom']} port {r['remote_port']}" + (
                f" [{r['backend']}]" if r["backend"] else "")
        elif r["state"] == "unbound":
            detail = f"for dom{r['remote_dom']}"
        else:
            detail = ""
        lines.append(f"{port:<5} {r['state']:<12} {r['vcpu']:<5} {detail:<26} "
                     f"{'yes' if r['pending'] else 'no':<7} {'yes' if r['masked'] else 'no':<7}"
                     f"{r['sends']:<6} {r['raised']}")
    other = [p for p in s.m.evtchn.delivery.pending_ports() if p not in rows]
    if other:
        lines.append(f"pending bits set on unbound ports: {other}")
    return "\n".join(lines), rows


def info_irq(s: Session, args: str):
    m = s.m
    sym = s.symbols.resolve("evtchn_to_irq")
    if sym is None:
        return ("info irq needs the guest's `evtchn_to_irq` (Linux's event-channel → IRQ table); "
                "no such symbol is known for this guest", {})
    table = read_word(m, sym.address)
    if not table:
        return (f"evtchn_to_irq ({s.fmt(sym.address)}) is not set up yet (the guest has not "
                "initialised its event channels)", {})
    per_row = 4096 // 4           # EVTCHN_PER_ROW: a page of ints
    lines = ["port  irq   (Linux evtchn_to_irq; irq_info is not decoded)"]
    mapping = {}
    for port in sorted(m.evtchn.ports):
        row = read_word(m, table + (port // per_row) * m.abi.word)
        if not row:
            continue
        try:
            raw = read(m, Address("va", row + (port % per_row) * 4), 4)
        except DebugError:
            continue
        irq = struct.unpack("<i", raw)[0]
        if irq >= 0:
            mapping[port] = irq
            lines.append(f"{port:<5} {irq}")
    if not mapping:
        lines.append("(no bound port has an IRQ yet)")
    return "\n".join(lines), mapping


def info_traps(s: Session, args: str):
    v = s.m.vcpu
    lines = ["trap table (set_trap_table):"]
    for vec in sorted(v.trap_table):
        t = v.trap_table[vec]
        lines.append(f"  {vec:#04x} {vector_name(vec):<6} dpl {t.flags & 3}"
                     f"{' clear-IF' if t.flags & X.TI_CLEAR_IF else '':<9} cs {t.cs:#06x} → "
                     f"{s.fmt(t.address)}")
    if not v.trap_table:
        lines.append("  (empty)")
    lines.append("callbacks:")
    for kind in sorted(v.callbacks):
        cb = v.callbacks[kind]
        lines.append(f"  {X.CALLBACK_NAMES.get(kind, str(kind)):<10} → {s.fmt(cb.address)}"
                     f"{' cs ' + hex(cb.cs) if cb.cs else ''}"
                     f"{' (mask events)' if cb.flags & X.CALLBACKF_mask_events else ''}")
    if not v.callbacks:
        lines.append("  (none registered)")
    lines.append(f"kernel stack: ss {v.kernel_ss:#x} sp {v.kernel_sp:#x}")
    return "\n".join(lines), {"traps": {k: dataclasses.asdict(t) for k, t in v.trap_table.items()},
                              "callbacks": {k: dataclasses.asdict(c) for k, c in v.callbacks.items()}}


def _descriptor(desc: int) -> str:
    if not desc:
        return "null"
    base = ((desc >> 16) & 0xFFFFFF) | ((desc >> 56) & 0xFF) << 24
    limit = (desc & 0xFFFF) | ((desc >> 48) & 0xF) << 16
    if desc >> 55 & 1:
        limit = (limit << 12) | 0xFFF
    access = (desc >> 40) & 0xFF
    dpl = (access >> 5) & 3
    present = access >> 7 & 1
    system = not access >> 4 & 1
    if system:
        kind = f"system type {access & 0xF}"
    elif access & 8:
        kind = "code" + (" 64-bit" if desc >> 53 & 1 else (" 32-bit" if desc >> 54 & 1 else ""))
    else:
        kind = "data" + (" writable" if access & 2 else " read-only")
    return f"{kind}, dpl {dpl}, base {base:#x}, limit {limit:#x}{'' if present else ', NOT present'}"


def info_gdt(s: Session, args: str):
    m = s.m
    v = m.vcpu
    lines = [f"guest GDT (set_gdt): {len(v.gdt_frames)} frame(s) {[hex(f) for f in v.gdt_frames]}, "
             f"{v.gdt_entries} entries"]
    for i in range(min(v.gdt_entries, 512 * len(v.gdt_frames))):
        mfn = v.gdt_frames[i // 512]
        desc = m.memory.read_u64((mfn << PAGE_SHIFT) + (i % 512) * 8)
        if desc:
            lines.append(f"  {i:4d} sel {i << 3:#06x}  {desc:#018x}  {_descriptor(desc)}")
    lines.append("Xen's reserved descriptors (FLAT_*):")
    base = m.xen_area.gdt_reserved_mfn << PAGE_SHIFT
    for i in range(512):
        desc = m.memory.read_u64(base + i * 8)
        if desc:
            sel = (FIRST_RESERVED_GDT_ENTRY + i) << 3 | (desc >> 45 & 3)     # RPL = DPL
            lines.append(f"  sel {sel:#06x}  {desc:#018x}  {_descriptor(desc)}")
    return "\n".join(lines)


def info_p2m(s: Session, args: str):
    m = s.m
    d = m.domain
    if args:
        lo_text, _, hi_text = args.partition("-")
        lo = parse_int(lo_text, "pfn")
        hi = parse_int(hi_text, "pfn") if hi_text else lo
    else:
        lo, hi = 0, min(15, d.nr_pages - 1)
    if lo > hi or hi - lo > 4096:
        raise DebugError("info p2m: a range of at most 4096 pfns, low-high")
    lines = [f"p2m: {d.nr_pages} pages, guest list at va {m.layout.p2m_va:#x}"]
    rows = {}
    for pfn in range(lo, hi + 1):
        mfn = d.pfn_to_mfn(pfn)
        if not m.memory.is_valid_mfn(mfn):
            lines.append(f"  pfn {pfn:#x} → invalid")
            continue
        back = int(m.layout.m2p[mfn])
        check = "" if back == pfn else f"  (M2P says pfn {back:#x}!)"
        lines.append(f"  pfn {pfn:#x} → mfn {mfn:#x}{check}")
        rows[pfn] = mfn
    return "\n".join(lines), rows


def info_timers(s: Session, args: str):
    clock = s.m.clock
    deadline = clock.next_deadline()
    timers = getattr(clock, "timers", None)
    now = clock.now_ns() if hasattr(clock, "now_ns") else None
    lines = [f"virtual TSC {s.m.read_tsc()}" + (f", system time {now} ns" if now is not None
                                                 else "") +
             f", next deadline {'none' if deadline is None else deadline} (instruction count)"]
    config = getattr(clock, "config", None)
    if config is not None:
        boot = datetime.fromtimestamp(config.wallclock_ns // 1_000_000_000, timezone.utc)
        lines.append(f"TSC at {config.tsc_khz} kHz ({config.tsc_per_insn} ticks per instruction), "
                     f"wallclock at boot {boot:%Y-%m-%dT%H:%M:%SZ}")
    if timers is None:
        lines.append(f"timers: {NOT_YET} (the machine keeps no timer state yet)")
        return "\n".join(lines), {}
    items = timers.items() if hasattr(timers, "items") else enumerate(timers)
    rows = {}
    for key, t in items:
        text = str(t)
        lines.append(f"  {text}" if text.startswith(str(key)) else f"  {key}: {text}")
        rows[str(key)] = {"deadline": getattr(t, "deadline", None), "fired": getattr(t, "fired", None)}
    if not rows:
        lines.append("  no timers")
    return "\n".join(lines), rows


def info_multicall(s: Session, args: str):
    m = s.m
    state = getattr(m, "multicalls", None)
    if state is None:
        return f"multicall: {NOT_YET}"
    lines = [f"multicall batches so far: {state.batches}"]
    if state.last:
        lines.append("last batch:")
        for e in state.last:
            d = hypercalls.BY_NR.get(e.op)
            names = d.args_for(m.abi.bits) if d else ()
            args_text = ", ".join(f"{k}={v:#x}" for k, v in zip(names, e.args, strict=False))
            result = "-" if e.result is None else (f"{e.result}" if e.result > -4096 else hex(e.result))
            lines.append(f"  [{e.index}] {hypercalls.name_of(e.op)}({args_text}) → {result}")
    lines.append(_pending_linux_batch(s))
    return "\n".join(lines)


def _pending_linux_batch(s: Session) -> str:
    """Linux's not-yet-issued batch: the per-CPU ``mc_buffer`` (layout of Linux 6.1, no MC_DEBUG)."""
    m = s.m
    sym = s.symbols.resolve("mc_buffer")
    if sym is None:
        return "guest's pending batch: needs Linux's mc_buffer symbol (not known for this guest)"
    base = m.vcpu.gs_base_kernel
    if not base:
        return "guest's pending batch: the per-CPU area is not set up yet (no kernel GS base)"
    va = base + sym.address
    idx = read_word(m, va)
    if idx is None:
        return f"guest's pending batch: mc_buffer at {va:#x} is not readable"
    mcidx = idx & 0xFFFFFFFF
    return f"guest's pending batch (Linux mc_buffer at {va:#x}, best effort): {mcidx} entries queued"


def info_grant(s: Session, args: str):
    gt = getattr(s.m, "grant_table", None)
    if gt is None or not hasattr(gt, "entries"):
        return f"grant tables: {NOT_YET} (the machine keeps no grant table)"
    frames = getattr(gt, "frames", [])
    lines = [f"grant table v{getattr(gt, 'version', '?')}: {len(frames)} frame(s) "
             f"{[hex(f) for f in frames]}"]
    entries = gt.entries()
    for e in entries[:64]:
        lines.append(f"  ref {e.ref:<5} dom{e.domid:<5} frame {e.frame:#x} "
                     f"[{' '.join(e.flag_names)}]")
    if len(entries) > 64:
        lines.append(f"  … {len(entries) - 64} more")
    if not entries:
        lines.append("  no entry in use")
    return "\n".join(lines), [dataclasses.asdict(e) for e in entries]


def info_mmu(s: Session, args: str):
    m = s.m
    lines = [f"top-level table: mfn {m.vcpu.guest_table:#x}, cr3 {m.cpu.cr3:#x}",
             f"bootstrap tables: {len(m.layout.pt_frames)} "
             f"({', '.join(f'L{lv} {mfn:#x}' for lv, mfn in m.layout.pt_frames[:8])}"
             f"{' …' if len(m.layout.pt_frames) > 8 else ''})",
             frame_state_text(m, m.vcpu.guest_table)]
    return "\n".join(lines)


def info_xenstore(s: Session, args: str):
    from xendbg.machine.xenstore import XenStoreError
    path = args or f"/local/domain/{s.m.domain.domid}"
    try:
        tree = s.m.xenstore.snapshot(path)
    except XenStoreError as exc:
        raise DebugError(f"xenstore {path}: {exc}") from None
    lines: list[str] = []

    def show(p: str, node: dict, depth: int) -> None:
        if len(lines) >= 300:
            return
        value = node["value"].decode("utf-8", "replace")
        lines.append(f"{'  ' * depth}{p.rsplit('/', 1)[-1] or '/'} = {value!r}")
        for name in sorted(node["children"]):
            show(f"{p.rstrip('/')}/{name}", node["children"][name], depth + 1)

    show(path, tree, 0)
    if len(lines) >= 300:
        lines.append("… (truncated)")
    return "\n".join([path + ":", *lines[1:]] if lines else [path]), tree


def info_console(s: Session, args: str):
    c = s.m.console
    tail = bytes(c.output[-2048:]).decode("utf-8", "replace")
    lines = [f"console: {len(c.output)} bytes written ({c.ring_bytes_out} through the ring), "
             f"{c.ring_bytes_in} bytes of input delivered, {len(c.pending_input)} queued"]
    lines.append("last output:" if tail else "no output yet")
    lines += ["  " + ln for ln in tail.splitlines()[-30:]]
    return "\n".join(lines)


def info_layout(s: Session, args: str):
    lay = s.m.layout
    lines = [f"entry {s.fmt(lay.entry)}, start_info {lay.start_info_va:#x}, page tables "
             f"{lay.pt_base_va:#x} (mfn {lay.pt_base_mfn:#x}), {lay.machine_frames} machine frames"]
    for r in lay.regions:
        lines.append(f"  {r.name:<16} va {r.va:#x}  pfn {r.pfn:#x}  {r.pages} pages")
    return "\n".join(lines)


def info_domain(s: Session, args: str):
    m = s.m
    d = m.domain
    state = "crashed: " + d.crashed if d.crashed else (
        f"shut down ({d.shutdown.name})" if d.shutdown else "running")
    lines = [f"domain {d.domid} ({m.abi.name}): {state}", f"{d.nr_pages} pages "
             f"({d.nr_pages * 4 // 1024} MiB), vm_assist {d.vm_assist:#x}",
             f"instructions {m.insns}, hypercalls {sum(m.stats.calls.values())}"]
    for name, count in sorted(m.stats.calls.items(), key=lambda kv: -kv[1])[:20]:
        errors = m.stats.errors.get(name, 0)
        lines.append(f"  {name:<24} {count:6d} calls {errors:6d} errors"
                     f"{'  (not implemented)' if name in m.stats.unimplemented else ''}")
    return "\n".join(lines)


TOPICS: dict[str, Topic] = {t.name: t for t in (
    Topic("registers", "registers", "guest registers, cr0/cr2/cr3, mode",
          "The vCPU's registers (rip symbolized), the control registers as the guest sees them, "
          "kernel/user mode and the instruction count.", info_registers),
    Topic("breakpoints", "breakpoints", "breakpoints and watchpoints",
          "Every breakpoint and watchpoint: number, kind, enabled, hit count, what it stops on.",
          info_breakpoints),
    Topic("symbol", "symbol NAME|ADDRESS", "a symbol's address, or an address's symbol",
          "NAME → its address, type and where the name came from (symtab, System.map, kallsyms, "
          "grub-exports); ADDRESS → symbol+offset.", info_symbol),
    Topic("vcpu", "vcpu", "vcpu_info: upcall mask/pending, pending_sel, time",
          "The vCPU's shared vcpu_info (event upcall pending and mask, pending selector, cr2, "
          "time info) and Xen's per-vCPU state.", info_vcpu),
    Topic("evtchn", "evtchn", "event channels: state, binding, pending, masked",
          "Every open port with its binding, pending and mask bits, sends and raises.", info_evtchn),
    Topic("irq", "irq", "the guest's port → IRQ map (Linux, via symbols)",
          "Linux's evtchn_to_irq table read from guest memory, best effort.", info_irq),
    Topic("traps", "traps", "trap table and callbacks",
          "The virtual IDT given with set_trap_table, the registered callbacks, the kernel stack.",
          info_traps),
    Topic("gdt", "gdt", "the guest's GDT frames and Xen's reserved descriptors",
          "Descriptors of the frames given to set_gdt, then Xen's FLAT_* descriptors.", info_gdt),
    Topic("p2m", "p2m [PFN[-PFN]]", "pfn → mfn, checked against the M2P",
          "The domain's p2m for a range of pfns (default the first 16), with the M2P back-check.",
          info_p2m),
    Topic("frame", "frame MFN|pfn:PFN", "one machine frame: owner, role, type, history",
          "Owner, M2P pfn, what the frame is (layout region, page table, Xen page), its page type "
          "and pin where the MMU keeps them, and the history of calls and MMU events naming it.",
          info_frame),
    Topic("mmu", "mmu", "page-table bases and MMU state",
          "The current top-level table, the bootstrap tables, and the MMU's state where kept.",
          info_mmu),
    Topic("timers", "timers", "virtual time and pending timers", "Virtual TSC, next deadline, "
          "and the timers, where the machine keeps them.", info_timers),
    Topic("multicall", "multicall", "the last multicall batch and the guest's pending one",
          "The last batch Xen ran, each entry with its result; the guest's not-yet-issued batch "
          "where symbols allow (Linux's mc_buffer).", info_multicall),
    Topic("grant", "grant", "grant tables", "The domain's grant table, where the machine keeps one.",
          info_grant),
    Topic("xenstore", "xenstore [PATH]", "a xenstore subtree (default: the domain's home)",
          "The nodes under PATH with their values.", info_xenstore),
    Topic("console", "console", "console counters and the last output",
          "What the guest printed (both paths), input delivered and queued.", info_console),
    Topic("layout", "layout", "the domain builder's start-of-day layout",
          "Where the builder put the kernel, p2m, start_info, rings, page tables and stack.",
          info_layout),
    Topic("domain", "domain", "domain state and hypercall counts",
          "Whether the domain runs, crashed or shut down; instructions and hypercalls so far.",
          info_domain),
)}

ALIASES = {"reg": "registers", "regs": "registers", "r": "registers", "b": "breakpoints",
           "break": "breakpoints", "watchpoints": "breakpoints", "sym": "symbol",
           "events": "evtchn", "event": "evtchn", "trap": "traps", "timer": "timers",
           "grants": "grant", "grant-table": "grant", "mc": "multicall"}

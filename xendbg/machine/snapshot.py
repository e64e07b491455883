"""Read-only snapshots of the machine for the TUI: ``snapshot(machine, …) -> MachineSnapshot``.

A snapshot is a tree of frozen dataclasses (and read-only numpy arrays) copied out of the machine
at one instant: the registers, the code around the instruction pointer, the stack, the vCPU's
shared ``vcpu_info``, the event channels, the timers, the last multicall batch, and on request the
frame table (pfn → mfn, owners, page types), a page walk, a window of memory and one frame's MMU
history. The panels render snapshots and never touch the machine, so a snapshot must be taken on
the thread that runs the emulator, when it is between two blocks (a ``tick`` event, or stopped).

Nothing here changes the machine. The machine never imports this module.

The MMU and the clock are growing while this is written; what they do not keep yet is ``None`` in
the snapshot (the panels then say "not kept by the machine yet"), never an invented value.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

import capstone
import numpy as np

from xendbg.fast.walk import WALK_OK, walk
from xendbg.machine import hypercalls
from xendbg.machine.abi import layout as L
from xendbg.machine.events.evtchn import STATE_NAMES
from xendbg.machine.memory import PAGE_SHIFT, PAGE_SIZE

CODE_BEFORE = 12              # instructions shown before the current one
CODE_AFTER = 40               # … and from it on
CODE_LOOKBEHIND = 96          # bytes searched backwards for an instruction boundary
STACK_WORDS = 32
MEMORY_BYTES = 256


@dataclass(frozen=True)
class Insn:
    address: int
    size: int
    mnemonic: str
    op_str: str
    raw: bytes


@dataclass(frozen=True)
class CodeWindow:
    """Instructions around ``ip`` (``ip`` is one of them when the code is readable)."""

    ip: int
    insns: tuple[Insn, ...]
    error: str | None = None      # why there is nothing to show (an unmapped ip, …)


@dataclass(frozen=True)
class StackWindow:
    sp: int
    word: int
    words: tuple[tuple[int, int | None], ...]     # (va, value) from sp up; None: unreadable


@dataclass(frozen=True)
class PortState:
    port: int
    state: str
    vcpu: int
    remote_dom: int
    remote_port: int
    virq: int
    backend: str | None
    pending: bool
    masked: bool
    sends: int
    raised: int


@dataclass(frozen=True)
class VcpuState:
    """vCPU 0: Xen's own state and the guest-visible ``vcpu_info`` in shared_info."""

    vcpu_id: int
    online: bool
    kernel_mode: bool
    blocked: bool
    guest_table: int
    guest_table_user: int
    cr3: int
    cr2: int
    kernel_ss: int
    kernel_sp: int
    fpu_ts: bool
    iopl: int
    callbacks: tuple[tuple[int, int], ...]       # (CALLBACKTYPE_*, address)
    # vcpu_info
    upcall_pending: int
    upcall_mask: int
    pending_sel: int
    info_cr2: int
    time_version: int
    tsc_timestamp: int
    system_time: int
    tsc_to_system_mul: int
    tsc_shift: int
    time_flags: int


@dataclass(frozen=True)
class TimerState:
    kind: str                    # "single-shot", "periodic", … as the clock names it
    deadline: int                # virtual ns (or instruction count: see ``unit``)
    left: int
    unit: str = "ns"
    detail: str = ""


@dataclass(frozen=True)
class MulticallEntryState:
    index: int
    op: int
    name: str
    args: tuple[tuple[str, int], ...]
    result: int | None


@dataclass(frozen=True, eq=False)
class FrameTable:
    """The domain's pfn → mfn map and the per-frame state, all read-only arrays.

    ``p2m`` is indexed by pfn; ``owner`` and the MMU arrays by mfn. The MMU arrays are ``None``
    when the machine's MMU keeps no frame table.
    """

    domid: int
    nr_frames: int
    p2m: np.ndarray
    owner: np.ndarray
    m2p: np.ndarray
    page_type: np.ndarray | None = None
    type_count: np.ndarray | None = None
    count: np.ndarray | None = None
    pinned: np.ndarray | None = None
    validated: np.ndarray | None = None
    type_names: dict[int, str] = field(default_factory=dict)

    def mfn_of(self, pfn: int) -> int:
        return int(self.p2m[pfn])

    def valid_mfn(self, mfn: int) -> bool:
        return 0 <= mfn < self.nr_frames


@dataclass(frozen=True)
class WalkLevel:
    name: str
    index: int
    entry: int


@dataclass(frozen=True)
class PageWalk:
    va: int
    cr3: int
    status: int                  # xendbg.fast.walk.WALK_*
    ma: int | None
    perms: int
    levels: tuple[WalkLevel, ...]


@dataclass(frozen=True)
class MemoryWindow:
    address: int
    space: str                   # "va" or "ma"
    data: tuple[int | None, ...]  # one per byte; None where unreadable


@dataclass(frozen=True)
class FrameDetail:
    """One frame as the MMU describes it, with its recorded history (newest last)."""

    mfn: int
    info: tuple[tuple[str, object], ...]
    history: tuple[str, ...]


@dataclass(frozen=True, eq=False)      # compared by identity: a new snapshot is a new state
class MachineSnapshot:
    insns: int
    tsc: int
    vtime_ns: int | None          # None: the clock does not say (the TSC is shown instead)
    abi: str
    bits: int
    domain_state: str             # "alive", "crashed", "shutdown"
    dying_reason: str | None
    blocked_forever: bool
    registers: tuple[tuple[str, int], ...]
    code: CodeWindow
    stack: StackWindow
    vcpu: VcpuState
    ports: tuple[PortState, ...]
    stray_pending: tuple[int, ...]        # pending bits of ports that are not open
    timers: tuple[TimerState, ...] | None
    next_deadline: int | None
    multicall_batches: int
    multicall_last: tuple[MulticallEntryState, ...]
    hypercalls: int
    hypercall_errors: int
    console_bytes: int
    frames: FrameTable | None = None
    walk: PageWalk | None = None
    memory: MemoryWindow | None = None
    frame: FrameDetail | None = None

    @property
    def ip(self) -> int:
        return self.code.ip

    def register(self, name: str) -> int | None:
        for n, v in self.registers:
            if n == name:
                return v
        return None


# -- the pieces ------------------------------------------------------------------------------------

def _read_bytes(m, va: int, length: int) -> tuple[int | None, ...]:
    """``length`` bytes at ``va`` page by page (None for the bytes of unmapped pages).

    A debugger's read: through the current page tables as the CPU walks them, without Xen's
    ``access_ok`` (so Xen's own pages, the entry trampoline included, can be shown too)."""
    out: list[int | None] = []
    mask = (1 << m.abi.bits) - 1
    cr3 = m.cpu.cr3
    end = va + length
    while va < end:
        n = min(end - va, PAGE_SIZE - (va & (PAGE_SIZE - 1)))
        status, ma, _perms, _entries = walk(m.memory.bytes, cr3, va & mask, m.abi.page_levels)
        if status == WALK_OK and m.memory.contains(ma, n):
            out.extend(m.memory.view[ma:ma + n])
        else:
            out.extend([None] * n)
        va += n
    return tuple(out)


def _readable_prefix(m, va: int, length: int) -> bytes:
    data = _read_bytes(m, va, length)
    cut = data.index(None) if None in data else len(data)
    return bytes(data[:cut])  # type: ignore[arg-type]


def _readable_suffix(m, va: int, length: int) -> bytes:
    data = _read_bytes(m, va, length)
    cut = len(data) - data[::-1].index(None) if None in data else 0
    return bytes(data[cut:])  # type: ignore[arg-type]


_DISASSEMBLERS: dict[bool, capstone.Cs] = {}


def _disassembler(is64: bool) -> capstone.Cs:
    md = _DISASSEMBLERS.get(is64)
    if md is None:
        md = _DISASSEMBLERS[is64] = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64 if is64
                                                else capstone.CS_MODE_32)
    return md


def _decode(md, code: bytes, base: int, limit: int) -> list[Insn]:
    out = []
    for address, size, mnemonic, op_str in md.disasm_lite(code, base):
        out.append(Insn(address, size, mnemonic, op_str, code[address - base:address - base + size]))
        if len(out) >= limit:
            break
    return out


def _lands_on(md, code: bytes, base: int, ip: int) -> bool:
    end = base
    for address, size, _mn, _op in md.disasm_lite(code, base):
        end = address + size
    return end == ip and bool(code)


def code_window(m, ip: int, hint_start: int | None = None) -> CodeWindow:
    """Disassemble around ``ip``. The start is ``hint_start`` (a function's first instruction)
    when it is close enough, else the first byte within CODE_LOOKBEHIND from which decoding
    lands exactly on ``ip`` (x86 decoding resynchronises quickly)."""
    md = _disassembler(m.is64)
    after = _readable_prefix(m, ip, CODE_AFTER * 15)
    if not after:
        return CodeWindow(ip, (), f"{ip:#x} is not mapped")
    before: list[Insn] = []
    if hint_start is not None and 0 < ip - hint_start <= 4096:
        code = _readable_suffix(m, hint_start, ip - hint_start)
        if len(code) == ip - hint_start and _lands_on(md, code, hint_start, ip):
            before = _decode(md, code, hint_start, 4096)[-CODE_BEFORE:]
    if not before:
        behind = _readable_suffix(m, ip - CODE_LOOKBEHIND, CODE_LOOKBEHIND)
        base = ip - len(behind)
        for off in range(len(behind)):
            if _lands_on(md, behind[off:], base + off, ip):
                before = _decode(md, behind[off:], base + off, 4096)[-CODE_BEFORE:]
                break
    current = _decode(md, after, ip, CODE_AFTER)
    if not current:
        return CodeWindow(ip, tuple(before), f"cannot decode the instruction at {ip:#x}")
    return CodeWindow(ip, tuple(before + current))


def stack_window(m, sp: int, count: int = STACK_WORDS) -> StackWindow:
    word = m.abi.word
    data = _read_bytes(m, sp, count * word)
    words = []
    for i in range(count):
        chunk = data[i * word:(i + 1) * word]
        value = None if None in chunk else int.from_bytes(bytes(chunk), "little")  # type: ignore
        words.append((sp + i * word, value))
    return StackWindow(sp, word, tuple(words))


def vcpu_state(m) -> VcpuState:
    v = m.vcpu
    abi = m.abi
    raw = m.memory.read(v.vcpu_info_ma, L.VCPU_INFO_SIZE)
    word = abi.word
    version, _pad, tsc_ts, sys_time, mul, shift, flags = struct.unpack_from("<IIQQIbB", raw,
                                                                            abi.vcpu_time)
    return VcpuState(
        vcpu_id=v.vcpu_id, online=v.online, kernel_mode=v.kernel_mode, blocked=v.blocked,
        guest_table=v.guest_table, guest_table_user=v.guest_table_user, cr3=m.cpu.cr3,
        cr2=v.cr2, kernel_ss=v.kernel_ss, kernel_sp=v.kernel_sp, fpu_ts=v.fpu_ts, iopl=v.iopl,
        callbacks=tuple(sorted((k, c.address) for k, c in v.callbacks.items())),
        upcall_pending=raw[0], upcall_mask=raw[1],
        pending_sel=int.from_bytes(raw[abi.vcpu_pending_sel:abi.vcpu_pending_sel + word], "little"),
        info_cr2=int.from_bytes(raw[abi.vcpu_cr2:abi.vcpu_cr2 + word], "little"),
        time_version=version, tsc_timestamp=tsc_ts, system_time=sys_time,
        tsc_to_system_mul=mul, tsc_shift=shift, time_flags=flags)


def port_states(m) -> tuple[tuple[PortState, ...], tuple[int, ...]]:
    delivery = m.evtchn.delivery
    ports = []
    for port, chan in sorted(m.evtchn.ports.items()):
        ports.append(PortState(port, STATE_NAMES.get(chan.state, str(chan.state)), chan.vcpu,
                               chan.remote_dom, chan.remote_port, chan.virq, chan.backend,
                               delivery.is_pending(port), delivery.is_masked(port), chan.sends,
                               chan.raised))
    stray = tuple(p for p in delivery.pending_ports() if p not in m.evtchn.ports)
    return tuple(ports), stray


def clock_ns(m) -> int | None:
    """Virtual system time in ns, when the clock offers it (``now_ns()`` or ``system_time()``)."""
    for name in ("now_ns", "system_time_ns", "system_time", "now"):
        fn = getattr(m.clock, name, None)
        if callable(fn):
            try:
                value = fn()
            except TypeError:          # a method that wants arguments is not the one we mean
                continue
            if isinstance(value, int):
                return value
    return None


def timer_states(m, now_ns: int | None) -> tuple[TimerState, ...] | None:
    """The clock's pending timers, if it keeps any (``pending_timers()`` or ``timers``)."""
    clock = m.clock
    fn = getattr(clock, "pending_timers", None)
    items = fn() if callable(fn) else getattr(clock, "timers", None)
    if items is None:
        return None
    if isinstance(items, dict):
        items = list(items.values())
    out = []
    for t in items:
        if isinstance(t, TimerState):
            out.append(t)
            continue
        deadline = getattr(t, "deadline", None)
        if deadline is None:
            continue
        kind = str(getattr(t, "kind", getattr(t, "name", type(t).__name__)))
        parts = []
        if getattr(t, "vcpu", None) is not None:
            parts.append(f"vCPU {t.vcpu}")
        if getattr(t, "period", 0):
            parts.append(f"period {t.period} ns")
        if getattr(t, "fired", None) is not None:
            parts.append(f"fired {t.fired}×")
        detail = ", ".join(parts)
        left = deadline - now_ns if now_ns is not None else deadline - m.insns
        out.append(TimerState(kind, int(deadline), int(left), "ns" if now_ns is not None
                              else "insns", detail))
    return tuple(sorted(out, key=lambda t: t.deadline))


def multicall_entries(m) -> tuple[int, tuple[MulticallEntryState, ...]]:
    state = getattr(m, "multicalls", None)
    if state is None:
        return 0, ()
    out = []
    for e in state.last:
        d = hypercalls.BY_NR.get(e.op)
        names = d.args_for(m.abi.bits) if d else ()
        args = tuple((names[i] if i < len(names) else f"arg{i}", v)
                     for i, v in enumerate(e.args[:max(len(names), 1)]))
        out.append(MulticallEntryState(e.index, e.op, hypercalls.name_of(e.op), args, e.result))
    return state.batches, tuple(out)


def _frozen(a: np.ndarray) -> np.ndarray:
    a = np.array(a, copy=True)
    a.flags.writeable = False
    return a


def frame_table(m) -> FrameTable:
    """Copies of the p2m, the owners, the M2P and (where the MMU keeps them) the page types."""
    d = m.domain
    kw: dict = {}
    pt = getattr(m.mmu, "pt", None)
    names = None
    if pt is not None and hasattr(pt, "type") and hasattr(pt, "type_count"):
        try:
            from xendbg.machine.mmu import _validate as V  # the MMU's flag bits
            from xendbg.machine.mmu.page_types import TYPE_NAMES as names
        except ImportError:                                     # an MMU without a frame table
            names = None
    if names is not None:
        flags = np.asarray(pt.flags)
        kw = {"page_type": _frozen(pt.type), "type_count": _frozen(pt.type_count),
              "count": _frozen(pt.count),
              "pinned": _frozen((flags & V.F_PINNED) != 0),
              "validated": _frozen((flags & V.F_VALIDATED) != 0),
              "type_names": dict(names)}
    return FrameTable(d.domid, m.memory.nr_frames, _frozen(d.p2m), _frozen(m.memory.owner),
                      _frozen(m.layout.m2p), **kw)


def page_walk(m, va: int) -> PageWalk:
    levels = m.abi.page_levels
    cr3 = m.cpu.cr3
    va &= (1 << m.abi.bits) - 1
    status, ma, perms, entries = walk(m.memory.bytes, cr3, va, levels)
    names = ("L4", "L3", "L2", "L1") if levels == 4 else ("L3", "L2", "L1")
    shifts = (39, 30, 21, 12) if levels == 4 else (30, 21, 12)
    rows = tuple(WalkLevel(names[i], (va >> shifts[i]) & (3 if levels == 3 and i == 0 else 511),
                           int(e)) for i, e in enumerate(entries))
    return PageWalk(va, cr3, status, ma if status == WALK_OK else None, perms, rows)


def memory_window(m, address: int, space: str = "va", length: int = MEMORY_BYTES) -> MemoryWindow:
    if space == "ma":
        data = tuple(m.memory.view[address + i] if m.memory.contains(address + i) else None
                     for i in range(length))
    else:
        data = _read_bytes(m, address, length)
    return MemoryWindow(address, space, data)


def frame_detail(m, mfn: int, limit: int = 40) -> FrameDetail | None:
    if not m.memory.is_valid_mfn(mfn):
        return None
    info_fn = getattr(m.mmu, "frame_info", None)
    info = info_fn(mfn) if callable(info_fn) else {"mfn": mfn, "owner": int(m.memory.owner[mfn])}
    history: list[str] = []
    hist = getattr(m.mmu, "history", None)
    for r in list(getattr(hist, "records", ())):
        if getattr(r, "mfn", None) == mfn:
            history.append(f"insn {r.insns} ip {r.ip:#x}: {r.kind} {r.old} → {r.new} ({r.why})")
    return FrameDetail(mfn, tuple(info.items()), tuple(history[-limit:]))


# -- the whole ---------------------------------------------------------------------------------------

def snapshot(m, *, code_hint: int | None = None, frames: bool = False,
             walk_va: int | None = None, memory_at: tuple[int, str] | None = None,
             frame_mfn: int | None = None) -> MachineSnapshot:
    """Copy the machine's state. Call it on the emulator's thread, between blocks.

    ``code_hint``: the start of the function around the ip, when the caller knows it (symbols);
    ``frames``: include the frame table (a copy of the p2m and per-frame arrays);
    ``walk_va``/``memory_at``/``frame_mfn``: add a page walk, a memory window, one frame's detail.
    """
    regs = m.cpu.regs()
    ip = m.cpu.ip
    sp = m.cpu.sp
    d = m.domain
    if d.crashed:
        state, why = "crashed", d.crashed
    elif d.shutdown is not None:
        code = f" (code {d.shutdown.code})" if d.shutdown.code is not None else ""
        state, why = "shutdown", f"{d.shutdown.name}{code}"
    else:
        state, why = "alive", None
    ports, stray = port_states(m)
    now = clock_ns(m)
    batches, last = multicall_entries(m)
    return MachineSnapshot(
        insns=m.insns, tsc=m.read_tsc(), vtime_ns=now, abi=m.abi.name, bits=m.abi.bits,
        domain_state=state, dying_reason=why, blocked_forever=m.blocked_forever,
        registers=tuple(regs.items()), code=code_window(m, ip, code_hint),
        stack=stack_window(m, sp), vcpu=vcpu_state(m), ports=ports, stray_pending=stray,
        timers=timer_states(m, now), next_deadline=m.clock.next_deadline(),
        multicall_batches=batches, multicall_last=last,
        hypercalls=sum(m.stats.calls.values()), hypercall_errors=sum(m.stats.errors.values()),
        console_bytes=len(m.console.output),
        frames=frame_table(m) if frames else None,
        walk=page_walk(m, walk_va) if walk_va is not None else None,
        memory=memory_window(m, *memory_at) if memory_at is not None else None,
        frame=frame_detail(m, frame_mfn) if frame_mfn is not None else None)


__all__ = ["MachineSnapshot", "snapshot", "CodeWindow", "Insn", "StackWindow", "PortState",
           "VcpuState", "TimerState", "MulticallEntryState", "FrameTable", "PageWalk", "WalkLevel",
           "MemoryWindow", "FrameDetail", "PAGE_SHIFT"]

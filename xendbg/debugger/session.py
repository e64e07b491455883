"""The debugger session: one machine, its symbols and breakpoints, and run control.

A :class:`Session` is what both front ends drive — ``xendbg run --script`` and the TUI's command
line — through :meth:`Session.execute`, which runs one command of the command language
(:mod:`.commands`) and returns a :class:`CommandResult`: plain text plus structured data, and a
:class:`Stop` when the command ran the guest. Nothing here prints or knows about Textual.

How stops happen (never with a per-instruction hook while the guest runs freely):

* code breakpoints are Unicorn code hooks bounded to their one address; the hook asks the machine to
  stop, which leaves the guest *at* the address, not yet executed;
* hypercall breakpoints and ``step-hypercall`` listen to the machine's ``hypercall_entry`` event and
  ask it to stop before the call is made (the guest is left on its trap instruction); ``if
  error``/``result`` conditions are decided on the ``hypercall`` event after the call;
* event, trap, page, crash and console breakpoints listen to the matching machine events;
* watchpoints are memory hooks on machine ranges; they record the access and ask for a stop at the
  next block boundary (stopping inside a memory hook would re-execute the access, UNICORN.md §7);
* ``pause`` (from any thread) sets the block counter's flag, seen at the next block boundary.

Resuming from a stop never re-triggers it: the breakpoint at the current address, and the hypercall
the guest is stopped before, are stepped over once.
"""

from __future__ import annotations

import functools
import re
import struct
from collections import defaultdict
from dataclasses import dataclass, field

import capstone

from xendbg.debugger import xenstate
from xendbg.debugger.breakpoints import Breakpoint, BreakpointTable
from xendbg.debugger.decode import MAX_SHOWN, MMU_NAMES, MMUEXT_NAMES, PIN_LEVEL, describe_call
from xendbg.debugger.memview import Address, DebugError, read, registers
from xendbg.debugger.symbols import SymbolTable
from xendbg.machine import hypercalls
from xendbg.machine.abi import xen as X
from xendbg.machine.abi.errno import errno_name
from xendbg.machine.memory import PAGE_SHIFT
from xendbg.machine.traps import vector_name

PAGE_EVENTS = ("page_type", "mmu_reject")
# What the session keeps even when nothing can stop on an event (see Session._route_events): the
# console, and the frame history — from the calls that name frames and the MMU's page events.
HISTORY_CALLS = ("mmu_update", "mmuext_op")
ROUTINE_EVENTS = frozenset({"console", *(f"hypercall:{n}" for n in HISTORY_CALLS), *PAGE_EVENTS})
# The mmuext_op commands whose first argument is a frame (decode.decode_mmuext_op names the same).
_MFN_OPS = frozenset((*PIN_LEVEL, X.MMUEXT_UNPIN_TABLE, X.MMUEXT_NEW_BASEPTR,
                      X.MMUEXT_NEW_USER_BASEPTR, X.MMUEXT_CLEAR_PAGE, X.MMUEXT_MARK_SUPER,
                      X.MMUEXT_UNMARK_SUPER, X.MMUEXT_COPY_PAGE))


@dataclass
class Stop:
    """Why and where the guest stopped."""

    reason: str              # breakpoint, watchpoint, hypercall-entry, hypercall-exit, step, pause,
    #                          finish, crash, shutdown, blocked, budget, …
    ip: int
    where: str               # the ip with its symbol
    text: str                # what a user reads
    breakpoints: list[int] = field(default_factory=list)
    data: dict = field(default_factory=dict)


@dataclass
class CommandResult:
    ok: bool
    text: str = ""
    data: object = None
    stop: Stop | None = None


@dataclass
class _Hit:
    kind: str                    # "breakpoint", "watch", "internal", "note"
    bp: Breakpoint | None
    text: str
    data: dict = field(default_factory=dict)


class Session:
    """Debug ``machine`` (built, not necessarily started) with ``symbols``."""

    def __init__(self, machine, symbols: SymbolTable | None = None) -> None:
        self.m = machine
        self.symbols = symbols if symbols is not None else SymbolTable(0, 0)
        self.breakpoints = BreakpointTable()
        self.history: list[str] = []
        self.stops: list[Stop] = []
        self.last_stop: Stop | None = None
        # mfn → [(instruction count, "call" | "event", text)]: hypercalls naming the frame, and
        # the MMU events about it (the MMU may keep its own, fuller, history too).
        self.frame_history: dict[int, list[tuple[int, str, str]]] = defaultdict(list)
        # The console as chunks, joined only when read: `self.console_text += data` copied the
        # whole text (up to 1 MiB) on every console write of a chatty guest.
        self._console_parts: list[str] = []
        self._console_len = 0
        self._console_scan: dict[int, int] = {}
        self._hits: list[_Hit] = []
        self._code_bps: dict[int, list[Breakpoint]] = defaultdict(list)
        self._code_hooks: dict[int, object] = {}
        self._skip_code: int | None = None
        self._skip_entry: int | None = None
        self._step_hypercall = False
        self._entry_pending: dict | None = None
        self.at_entry: dict | None = None          # the hypercall the guest is stopped before
        self._finish: dict | None = None
        self._user_pause = False
        self.internal_errors: list[str] = []       # tracebacks of debugger bugs (commands)
        self._md = capstone.Cs(capstone.CS_ARCH_X86,
                               capstone.CS_MODE_64 if machine.is64 else capstone.CS_MODE_32)
        self._md.detail = True
        # Subscribed to the kinds it needs now (see _route_events): without breakpoints or a
        # step, a hypercall's entry event is not even built.
        self._listener = functools.partial(Session._on_event, self)
        machine.listeners.append(self._listener)
        self._route_events()

    @property
    def console_text(self) -> str:
        """What the guest printed (the last 512 KiB to 1 MiB of it)."""
        parts = self._console_parts
        if len(parts) > 1:
            parts[:] = ["".join(parts)]
        return parts[0] if parts else ""

    # -- commands -------------------------------------------------------------------------------
    def execute(self, line: str) -> CommandResult:
        """Run one command line; errors come back as ``ok=False`` with the message."""
        from xendbg.debugger.commands import run_command
        line = line.strip()
        if line and not line.startswith("#"):
            self.history.append(line)
        try:
            return run_command(self, line)
        finally:
            self._route_events()         # a breakpoint may have come or gone (even mid-run)

    def _route_events(self) -> None:
        """Take every event while anything may stop on one (a breakpoint, a hypercall step or
        finish, an entry to skip); otherwise only what is kept whatever happens (the console,
        frame histories from the calls that name frames and from page-type changes)."""
        everything = (bool(self.breakpoints.items) or self._step_hypercall
                      or self._skip_entry is not None or self._finish is not None)
        kinds = None if everything else ROUTINE_EVENTS
        listener = self._listener
        if not hasattr(listener, "event_kinds") or listener.event_kinds != kinds:
            listener.event_kinds = kinds
            self.m.reroute()

    def pause(self) -> None:
        """Stop the running guest at the next block boundary (safe from any thread)."""
        self._user_pause = True
        self.m.pause()

    # -- formatting helpers ---------------------------------------------------------------------
    def fmt(self, address: int) -> str:
        """``0x… <symbol+off>``; inside the hypercall page, also which hypercall's stub it is."""
        text = self.symbols.fmt(address)
        page = self.m.domain.hypercall_page_va
        if page is not None and 0 <= address - page < 4096:
            text += f" [{hypercalls.name_of((address - page) // 32)} stub]"
        return text

    def insn_at(self, ip: int) -> capstone.CsInsn | None:
        try:
            code = read(self.m, Address("va", ip), 16)
        except DebugError:
            return None
        return next(self._md.disasm(code, ip, 1), None)

    def location(self) -> str:
        ip = self.m.cpu.ip
        insn = self.insn_at(ip)
        if insn is None:
            return f"{self.fmt(ip)}: <not mapped>"
        text = f"{insn.mnemonic} {insn.op_str}".strip()
        from xendbg.debugger.examine import operand_symbol
        note = operand_symbol(self, insn)
        return f"{self.fmt(ip)}: {text}" + (f"    <{note}>" if note else "")

    # -- code breakpoints -----------------------------------------------------------------------
    def attach_code(self, bp: Breakpoint) -> None:
        va = bp.address
        if va not in self._code_hooks:
            self._code_hooks[va] = self.m.add_code_hook(va, self._on_code)
        self._code_bps[va].append(bp)

    def detach_code(self, bp: Breakpoint) -> None:
        va = bp.address
        lst = self._code_bps.get(va, [])
        if bp in lst:
            lst.remove(bp)
        if not lst and va in self._code_hooks:
            self.m.remove_hook(self._code_hooks.pop(va))
            self._code_bps.pop(va, None)

    def _on_code(self, va: int) -> None:
        if self._skip_code is not None:
            skip = self._skip_code == va
            self._skip_code = None
            if skip:
                return
        stop = False
        names = None
        for bp in list(self._code_bps.get(va, ())):
            if bp.internal:
                if bp.enabled and bp.predicate(self):
                    self._hits.append(_Hit("internal", bp, ""))
                    stop = True
                continue
            names = names or registers(self.m)
            if self._check(bp, names):
                self._hits.append(_Hit("breakpoint", bp, f"Breakpoint {bp.number}, {self.fmt(va)}"))
                stop = True
        if stop:
            self.m.request_stop("breakpoint")

    # -- watchpoints ----------------------------------------------------------------------------
    def attach_watch(self, bp: Breakpoint) -> None:
        for ma, length in bp.ranges:
            bp.handles.append(self.m.add_memory_hook(
                ma, length, write=bp.kind == "watch", read=bp.kind == "rwatch",
                callback=lambda kind, addr, size, value, ip, bp=bp: self._on_mem(bp, kind, addr,
                                                                                  size, value, ip)))

    def detach_hooks(self, bp: Breakpoint) -> None:
        for handle in bp.handles:
            self.m.remove_hook(handle)
        bp.handles.clear()

    def _on_mem(self, bp: Breakpoint, kind: str, ma: int, size: int, value: int, ip: int) -> None:
        if not bp.enabled:
            return
        old = int.from_bytes(self.m.memory.read(ma, size), "little")
        if kind == "read":
            value = old
        names = {**registers(self.m), "value": value, "old": old, "address": ma}
        if not self._check(bp, names):
            return
        where = f"ma {ma:#x}"
        if bp.va is not None:
            for r_ma, _len in bp.ranges[:1]:
                where = f"{bp.va + (ma - r_ma):#x} ({where})"
        if kind == "write":
            what = f"write of {size} bytes at {where} by {self.fmt(ip)}: {old:#x} → {value:#x}"
        else:
            what = f"read of {size} bytes at {where} by {self.fmt(ip)}: value {value:#x}"
        self._hits.append(_Hit("watch", bp, f"Watchpoint {bp.number}: {what}",
                               {"kind": kind, "ma": ma, "size": size, "value": value, "old": old,
                                "ip": ip}))
        self.m.pause()

    # -- machine events -------------------------------------------------------------------------
    def _check(self, bp: Breakpoint, names: dict) -> bool:
        try:
            return bp.should_stop(names)
        except DebugError as exc:
            bp.hits += 1
            self._hits.append(_Hit("note", bp, f"Breakpoint {bp.number}: {exc} (stopping)"))
            return True

    def _on_event(self, e) -> None:
        # Called for every hypercall (twice), console write, upcall and trap while the guest runs:
        # the common case — no breakpoint of the kind, no finish-hypercall — returns early.
        kind = e.kind
        if self._finish is not None:
            self._finish["events"].append(e)
        if kind == "hypercall_entry":
            self._hypercall_entry(e)
        elif kind == "hypercall":
            self._hypercall_exit(e)
        elif kind == "console":
            self._console(e.data["data"])
        elif not self.breakpoints.items and kind != "page_type" and kind != "mmu_reject":
            return
        elif kind == "upcall":
            self._upcall(e)
        elif kind == "trap":
            self._trap(e)
        elif kind == "crash":
            for bp in self.breakpoints.of_kind("crash"):
                if self._check(bp, {"reason": e.data.get("reason", "")}):
                    self._hits.append(_Hit("breakpoint", bp, f"Breakpoint {bp.number} (crash): "
                                                             f"{e.data.get('reason')}"))
        elif kind in PAGE_EVENTS:
            self._page_event(e)

    @staticmethod
    def _call_names(d: dict) -> dict:
        names: dict = {"name": d["name"], "nr": d["nr"], "ip": d["ip"],
                       "multicall": -1 if d.get("multicall") is None else d["multicall"]}
        for i, value in enumerate(d["args"]):
            names[f"arg{i}"] = value
        names.update(zip(d.get("arg_names", ()), d["args"], strict=False))
        if "result" in d:
            names["result"] = d["result"] if d["result"] is not None else 0
            names["error"] = d["error"] is not None
        return names

    def _hypercall_entry(self, e) -> None:
        d = e.data
        top = d["multicall"] is None
        if top and self._skip_entry is not None:
            skip = self._skip_entry == d["ip"]
            self._skip_entry = None
            self._route_events()         # nothing else may need the entries for this run
            if skip:
                return
        if not self.breakpoints.items and not self._step_hypercall:
            return
        hits = []
        names = None
        for bp in self.breakpoints.of_kind("hypercall"):
            if bp.at_exit or (bp.hypercall is not None and bp.hypercall != d["name"]):
                continue
            names = names or {**registers(self.m), **self._call_names(d)}
            if self._check(bp, names):
                hits.append(bp)
        stepping = self._step_hypercall and top
        if not hits and not stepping:
            return
        if top:
            self._step_hypercall = False
            self._entry_pending = dict(d, insns=e.insns)
            self.m.stop_before_hypercall()
        for bp in hits:
            where = "" if top else (f" — entry {d['multicall']} of a multicall batch; the batch "
                                    "cannot be stopped in the middle, so the guest stops after it")
            self._hits.append(_Hit("breakpoint", bp, f"Breakpoint {bp.number} "
                                                     f"(hypercall {bp.hypercall or 'any'}){where}"))
        if not top:
            self.m.request_stop("breakpoint")

    def _hypercall_exit(self, e) -> None:
        d = e.data
        self._record_history(e)
        fin = self._finish
        if fin is not None:
            if d["multicall"] is not None:
                fin["entries"].append(d)
            elif d["ip"] == fin["ip"] and not fin.get("done"):
                fin.update(done=True, result=d["result"], error=d["error"])
                self.m.request_stop("hypercall-exit")
        if not self.breakpoints.items:
            return
        names = None
        for bp in self.breakpoints.of_kind("hypercall"):
            if not bp.at_exit or (bp.hypercall is not None and bp.hypercall != d["name"]):
                continue
            names = names or {**registers(self.m), **self._call_names(d)}
            if self._check(bp, names):
                result = "no result" if d["result"] is None else _result_text(d["result"])
                inside = "" if d["multicall"] is None else f" (multicall entry {d['multicall']})"
                self._hits.append(_Hit("breakpoint", bp,
                                       f"Breakpoint {bp.number} (hypercall {bp.hypercall or 'any'} "
                                       f"{bp.condition.text if bp.condition else ''}): "
                                       f"{d['name']}{inside} returned {result}",
                                       {"call": d}))
                self.m.request_stop("breakpoint")

    def _record_history(self, e) -> None:
        """Per-frame history from the calls that name frames (mmuext_op, mmu_update).

        Runs after every such call, so it reads only what it keeps — the command and the frame of
        each request, in one guest read — instead of decoding the batch into text (the same
        commands and frames as :func:`~.decode.decode_call` finds).
        """
        d = e.data
        name = d["name"]
        if name not in HISTORY_CALLS:
            return
        pairs = _frames_named(self.m, name, d["args"])
        if not pairs:
            return
        result = "no result" if d["result"] is None else _result_text(d["result"])
        history = self.frame_history
        for cmd, mfn in pairs:
            history[mfn].append((e.insns, "call", f"{name} {cmd} → {result}"))

    def _console(self, data: bytes) -> None:
        text = data.decode("utf-8", "replace")
        self._console_parts.append(text)
        self._console_len += len(text)
        if self._console_len > 1 << 20:
            whole = self.console_text
            cut = len(whole) - (1 << 19)
            self._console_parts[:] = [whole[cut:]]
            self._console_len = len(whole) - cut
            self._console_scan = {k: max(0, v - cut) for k, v in self._console_scan.items()}
        if not self.breakpoints.items:
            return
        for bp in self.breakpoints.of_kind("console"):
            match = bp.regex.search(self.console_text, self._console_scan.get(bp.number, 0))
            if match is None:
                continue
            self._console_scan[bp.number] = match.end()
            if self._check(bp, {"text": match.group(0)}):
                self._hits.append(_Hit("breakpoint", bp, f"Breakpoint {bp.number} (console "
                                                         f"/{bp.regex.pattern}/): "
                                                         f"{match.group(0)!r}"))
                self.m.request_stop("breakpoint")

    def _upcall(self, e) -> None:
        pending = list(e.data.get("pending", []))
        for bp in self.breakpoints.of_kind("event"):
            port = bp.port
            if bp.virq is not None:
                port = self.m.evtchn.virq_ports.get((bp.virq, 0))
                if port is None:
                    continue
            if port is not None and port not in pending:
                continue
            names = {**registers(self.m), "port": port if port is not None else
                     (pending[0] if pending else -1), "pending": tuple(pending)}
            if self._check(bp, names):
                self._hits.append(_Hit("breakpoint", bp,
                                       f"Breakpoint {bp.number} ({bp.spec}): upcall to "
                                       f"{self.fmt(e.data['target'])} interrupting "
                                       f"{self.fmt(e.data['ip'])}; pending ports {pending}",
                                       dict(e.data)))
                self.m.request_stop("breakpoint")

    def _trap(self, e) -> None:
        d = e.data
        for bp in self.breakpoints.of_kind("trap"):
            if bp.vector is not None and bp.vector != d["vector"]:
                continue
            names = {**registers(self.m), "vector": d["vector"],
                     "error_code": d["error_code"] if d["error_code"] is not None else -1,
                     "cr2": d["cr2"] or 0}
            if self._check(bp, names):
                extra = "" if d["error_code"] is None else f" error code {d['error_code']:#x}"
                cr2 = "" if d["cr2"] is None else f" cr2 {d['cr2']:#x}"
                self._hits.append(_Hit("breakpoint", bp,
                                       f"Breakpoint {bp.number} (trap): {vector_name(d['vector'])}"
                                       f"{extra}{cr2} at {self.fmt(d['ip'])}, bounced to the guest",
                                       dict(d)))
                self.m.request_stop("breakpoint")

    def _page_event(self, e) -> None:
        d = e.data
        mfn = d.get("mfn")
        detail = ", ".join(f"{k}={_value(v)}" for k, v in d.items() if k != "mfn")
        if mfn is not None:
            self.frame_history[mfn].append((e.insns, "event", f"{e.kind} {detail}"))
        for bp in self.breakpoints.of_kind("page"):
            if bp.address is not None and bp.address != mfn:
                continue
            names = {**{k: v for k, v in d.items() if isinstance(v, (int, str))},
                     "mfn": mfn if mfn is not None else -1, "event": e.kind}
            if self._check(bp, names):
                shown = f"mfn {mfn:#x}" if isinstance(mfn, int) else "a frame"
                self._hits.append(_Hit("breakpoint", bp, f"Breakpoint {bp.number} (page): {e.kind} "
                                                         f"of {shown}: {detail}", dict(d)))
                self.m.request_stop("breakpoint")

    # -- run control ----------------------------------------------------------------------------
    def _check_runnable(self) -> None:
        d = self.m.domain
        if d.crashed:
            raise DebugError(f"the domain has crashed ({d.crashed}): nothing can run")
        if d.shutdown is not None:
            raise DebugError(f"the domain has shut down ({d.shutdown.name}): nothing can run")

    def _prepare(self) -> None:
        self._check_runnable()
        ip = self.m.cpu.ip
        self._hits = []
        self._skip_code = ip if ip in self._code_bps else None
        self._skip_entry = self.at_entry["ip"] if self.at_entry is not None else None
        self.at_entry = None
        self._entry_pending = None
        self._user_pause = False
        self._route_events()

    def resume(self, max_insns: int | None = None) -> Stop:
        """``continue``: run until something stops the guest."""
        self._prepare()
        return self._finish_stop(self.m.run(max_insns))

    def step_instruction(self) -> Stop:
        """``stepi``: one instruction (a hypercall instruction stops at the call's entry)."""
        self._prepare()
        return self._finish_stop(self.m.step())

    def run_to(self, va: int, predicate, reason: str) -> Stop:
        """Run until the guest reaches ``va`` with ``predicate(session)`` true (``next``/``finish``),
        or anything else stops it first."""
        helper = Breakpoint(0, "code", f"{reason} helper", internal=True, address=va,
                            predicate=predicate)
        self.attach_code(helper)
        try:
            stop = self.resume()
        finally:
            self.detach_code(helper)
        if stop.reason == "breakpoint" and any(h.bp is helper for h in self._hits) and \
                not any(h.kind != "internal" for h in self._hits):
            stop.reason = reason
            stop.text = f"{'Run till exit' if reason == 'finish' else 'Stepped over the call'}: " \
                        f"now at {self.location()}"
        return stop

    def step_hypercall(self) -> Stop:
        """Run to the next hypercall's entry; stop with the call decoded, not yet made."""
        self._step_hypercall = True
        try:
            return self.resume()
        finally:
            self._step_hypercall = False

    def finish_hypercall(self) -> Stop:
        """Make the call the guest is stopped before; stop after it with its result and what it
        changed in Xen's state."""
        entry = self.at_entry
        if entry is None:
            raise DebugError("not stopped at a hypercall entry (use step-hypercall or "
                             "break hypercall first)")
        before = xenstate.snapshot(self.m)
        self._finish = {"ip": entry["ip"], "events": [], "entries": [], "entry": entry}
        try:
            stop = self.resume()
        finally:
            fin, self._finish = self._finish, None
        if not fin.get("done"):
            return stop                  # it did not come back (shutdown, crash, blocked …)
        after = xenstate.snapshot(self.m)
        # A breakpoint on an entry of a multicall batch stops after the batch: say both.
        lines = [h.text for h in self._hits if h.kind in ("breakpoint", "note") and h.text]
        lines += [f"{entry['name']} returned {_result_text(fin['result'])}"
                 if fin["result"] is not None else f"{entry['name']} made (no return value: the "
                                                   "guest continues elsewhere)"]
        for sub in fin["entries"]:
            lines.append(f"  multicall entry {sub['multicall']}: {sub['name']} → "
                         f"{_result_text(sub['result']) if sub['result'] is not None else '-'}")
        changes = xenstate.diff(before, after)
        pages = [f"{ev.kind}: " + ", ".join(f"{k}={_value(v)}" for k, v in ev.data.items())
                 for ev in fin["events"] if ev.kind in PAGE_EVENTS]
        upcalls = [f"upcall delivered to {self.fmt(ev.data['target'])}, pending {ev.data['pending']}"
                   for ev in fin["events"] if ev.kind == "upcall"]
        changed = changes + pages + upcalls
        lines.append("Xen state changed:" if changed else "Xen state: no change")
        lines += ["  " + c for c in changed]
        lines.append(f"now at {self.location()}")
        stop.text = "\n".join(lines)
        stop.data.update(result=fin["result"], error=fin["error"], changes=changed,
                         entries=fin["entries"])
        return stop

    def _finish_stop(self, reason: str) -> Stop:
        m = self.m
        ip = m.cpu.ip
        hits = self._hits
        data: dict = {"insns": m.insns}
        lines = [h.text for h in hits if h.kind in ("breakpoint", "watch", "note") and h.text]
        numbers = [h.bp.number for h in hits if h.bp is not None and not h.bp.internal]
        watches = [h.data for h in hits if h.kind == "watch"]
        if watches and reason == "pause":
            reason = "watchpoint"
            data["watch"] = watches[0]
            lines.append(f"(stopped at the next block boundary after the access, "
                         f"{self.fmt(ip)})")
        elif reason == "hypercall-entry" and self._entry_pending is not None:
            d = self._entry_pending
            self.at_entry = d
            args = dict(zip(d["arg_names"], d["args"], strict=False))
            decoded = describe_call(m, d["name"], args)
            data.update(call=decoded.data)
            lines.append(f"Hypercall entry: {decoded.text()}")
        elif reason == "pause":
            lines.append("Paused" + (" (interrupted)" if self._user_pause else ""))
        elif reason == "crash":
            lines.append(f"The domain crashed: {m.domain.crashed}")
        elif reason == "shutdown":
            s = m.domain.shutdown
            lines.append(f"The domain shut down: {s.name}" + (f" (code {s.code})"
                                                               if s.code is not None else ""))
        elif reason == "blocked":
            lines.append("The vCPU blocked with nothing to wake it (no pending event, no timer)")
        elif reason == "budget":
            lines.append(f"Stopped after the instruction budget ({m.insns} instructions)")
        if reason not in ("crash", "shutdown"):
            lines.append(self.location())
        stop = Stop(reason, ip, self.fmt(ip), "\n".join(lines), numbers, data)
        self.last_stop = stop
        self.stops.append(stop)
        if len(self.stops) > 1000:
            del self.stops[:500]
        return stop


def _frames_named(m, name: str, args: list[int]) -> list[tuple[str, int]]:
    """(command name, mfn) of each request of an mmu_update / mmuext_op batch that names a frame,
    for the first MAX_SHOWN requests as the decoder shows them; the requests after an unreadable
    one are not read."""
    count = min(args[1] & ~(1 << 31), MAX_SHOWN)     # bit 31: the continuation flag
    if count <= 0:
        return []
    if name == "mmu_update":
        size, fmt = 16, "<QQ"
    else:
        size, fmt = m.abi.mmuext_op_size, ("<I4xQQ" if m.abi.word == 8 else "<III")
    raw = m.guest.read(args[0], size * count)
    if raw is None:                      # the batch crosses into an unmapped page: entry by entry
        chunks = []
        for i in range(count):
            one = m.guest.read(args[0] + size * i, size)
            if one is None:
                break
            chunks.append(one)
        raw = b"".join(chunks)
    out = []
    for i in range(len(raw) // size):
        if name == "mmu_update":
            ptr, _val = struct.unpack_from(fmt, raw, i * size)
            out.append((MMU_NAMES.get(ptr & 3, str(ptr & 3)), (ptr & ~3) >> PAGE_SHIFT))
        else:
            cmd, arg1, _arg2 = struct.unpack_from(fmt, raw, i * size)
            if cmd in _MFN_OPS:
                out.append((MMUEXT_NAMES.get(cmd, f"cmd {cmd}"), arg1))
    return out


def _value(v) -> str:
    """Event fields: numbers above 9 in hex (frames, addresses), the rest as they are."""
    if isinstance(v, int) and not isinstance(v, bool) and v > 9:
        return f"{v:#x}"
    return str(v)


def _result_text(result: int) -> str:
    if -4096 < result < 0:
        return f"{result} ({errno_name(result)})"
    return f"{result:#x}" if result > 9 else str(result)


def compile_regex(text: str) -> re.Pattern:
    try:
        return re.compile(text, re.MULTILINE)
    except re.error as exc:
        raise DebugError(f"bad regular expression {text!r}: {exc}") from None

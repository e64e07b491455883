"""The command language: every command defined once — name, aliases, usage, help — and run here.

``xendbg run --script FILE`` and the TUI's command line both call :func:`run_command` (through
:meth:`Session.execute`); ``help`` and ``help COMMAND`` print from the same table. A command returns
a :class:`~xendbg.debugger.session.CommandResult`; a DebugError becomes ``ok=False`` with its
message.
"""

from __future__ import annotations

import re
import traceback
from collections.abc import Callable
from dataclasses import dataclass

from xendbg.debugger import examine, info
from xendbg.debugger.breakpoints import Breakpoint, Condition
from xendbg.debugger.decode import VIRQ_NAMES
from xendbg.debugger.memview import (
    Address,
    DebugError,
    evaluate,
    parse_address,
    parse_int,
    read_word,
    registers,
    translate,
)
from xendbg.debugger.session import CommandResult, Session, Stop, compile_regex
from xendbg.machine import hypercalls
from xendbg.machine.abi import xen as X
from xendbg.machine.memory import PAGE_SIZE
from xendbg.machine.traps import EXCEPTION_NAMES


@dataclass(frozen=True)
class Command:
    name: str
    usage: str
    summary: str
    help: str
    handler: Callable[[Session, str], CommandResult]
    aliases: tuple[str, ...] = ()
    runs_guest: bool = False


def _stop_result(stop: Stop) -> CommandResult:
    return CommandResult(True, stop.text, {"reason": stop.reason, "ip": stop.ip, **stop.data}, stop)


# -- run control ------------------------------------------------------------------------------------

def cmd_continue(s: Session, rest: str) -> CommandResult:
    if rest.strip():
        raise DebugError("continue takes no argument")
    return _stop_result(s.resume())


def cmd_pause(s: Session, rest: str) -> CommandResult:
    s.pause()
    return CommandResult(True, "pause requested: the guest stops at the next block boundary "
                               "(nothing to do if it is not running)")


def cmd_stepi(s: Session, rest: str) -> CommandResult:
    n = parse_int(rest.strip(), "stepi count") if rest.strip() else 1
    if n < 1:
        raise DebugError("stepi count must be at least 1")
    stop = None
    for _ in range(n):
        stop = s.step_instruction()
        if stop.reason != "step":
            break
    return _stop_result(stop)


def cmd_next(s: Session, rest: str) -> CommandResult:
    m = s.m
    s._check_runnable()
    insn = s.insn_at(m.cpu.ip)
    if insn is None or not insn.mnemonic.startswith("call"):
        return _stop_result(s.step_instruction())
    sp = m.cpu.sp
    return _stop_result(s.run_to(m.cpu.ip + insn.size, lambda ss: ss.m.cpu.sp >= sp, "next"))


def cmd_finish(s: Session, rest: str) -> CommandResult:
    m = s.m
    s._check_runnable()
    ip, sp = m.cpu.ip, m.cpu.sp
    word = m.abi.word
    found = s.symbols.lookup(ip)
    if found is not None and found[1] == 0:
        ret, frame, how = read_word(m, sp), sp, "return address from [sp], at the first instruction"
    else:
        fp = registers(m)["fp"]
        ret, frame = read_word(m, fp + word), fp
        how = "return address from the frame pointer, right only if this function keeps one"
    if not ret:
        raise DebugError("cannot find the return address (no readable frame)")
    stop = s.run_to(ret, lambda ss: ss.m.cpu.sp > frame, "finish")
    if stop.reason == "finish":
        stop.text = f"Run till exit ({how}): returned to {s.location()}"
    return _stop_result(stop)


def cmd_step_hypercall(s: Session, rest: str) -> CommandResult:
    return _stop_result(s.step_hypercall())


def cmd_finish_hypercall(s: Session, rest: str) -> CommandResult:
    return _stop_result(s.finish_hypercall())


# -- breakpoints ------------------------------------------------------------------------------------

def _split_condition(rest: str) -> tuple[str, Condition | None]:
    match = re.search(r"(^|\s)if\s+", rest)
    if match is None:
        return rest.strip(), None
    return rest[:match.start()].strip(), Condition(rest[match.end():])


def _hypercall_name(text: str) -> str | None:
    if text in ("", "any"):
        return None
    names = {d.name for d in hypercalls.TABLE} | set(X.HYPERCALL_NAMES.values())
    if text in names:
        return text
    if text.isdigit() and int(text) < hypercalls.NR_HYPERCALLS:
        return hypercalls.name_of(int(text))
    close = sorted(n for n in names if text in n)[:6]
    raise DebugError(f"no hypercall {text!r}" + (f" (did you mean {', '.join(close)}?)"
                                                  if close else ""))


def cmd_break(s: Session, rest: str) -> CommandResult:
    rest = rest.strip()
    if not rest:
        raise DebugError("break what? (see `help break`)")
    word, _, tail = rest.partition(" ")
    if word == "console":
        if not tail.strip():
            raise DebugError("break console needs a regular expression")
        bp = Breakpoint(0, "console", f"console /{tail.strip()}/", regex=compile_regex(tail.strip()))
        s.breakpoints.add(bp)
        return CommandResult(True, f"Breakpoint {bp.number}: {bp.describe()}", {"number": bp.number})
    if word in ("hypercall", "event", "trap", "page", "crash"):
        target, cond = _split_condition(tail)
        bp = _xen_breakpoint(s, word, target, cond)
    else:
        target, cond = _split_condition(rest)
        va = evaluate(s.m, s.symbols, target.lstrip("*"))
        bp = Breakpoint(0, "code", s.fmt(va), condition=cond, address=va)
        s.attach_code(bp)
    s.breakpoints.add(bp)
    text = f"Breakpoint {bp.number}: {bp.describe()}"
    if bp.kind == "code" and translate(s.m, bp.address) is None:
        text += " (not mapped yet)"
    return CommandResult(True, text, {"number": bp.number, "kind": bp.kind, "address": bp.address})


def _xen_breakpoint(s: Session, kind: str, target: str, cond: Condition | None) -> Breakpoint:
    target = target.strip()
    if kind == "hypercall":
        name = _hypercall_name(target)
        at_exit = cond is not None and bool(cond.names() & {"error", "result"})
        spec = f"hypercall {name or 'any'}" + (" (decided after the call)" if at_exit else "")
        return Breakpoint(0, kind, spec, condition=cond, hypercall=name, at_exit=at_exit)
    if kind == "event":
        if target in ("", "any"):
            return Breakpoint(0, kind, "event any", condition=cond)
        if target.startswith("virq:"):
            wanted = target[5:].upper().removeprefix("VIRQ_")
            by_name = {v: k for k, v in VIRQ_NAMES.items()}
            if wanted not in by_name:
                raise DebugError(f"no VIRQ {target[5:]!r} (known: "
                                 f"{', '.join(sorted(by_name)).lower()})")
            return Breakpoint(0, kind, f"event virq:{wanted.lower()}", condition=cond,
                              virq=by_name[wanted])
        port = parse_int(target, "event port")
        if not 0 < port < s.m.evtchn.nr_ports:
            raise DebugError(f"port {port} is out of range (1..{s.m.evtchn.nr_ports - 1})")
        return Breakpoint(0, kind, f"event port {port}", condition=cond, port=port)
    if kind == "trap":
        if target in ("", "any"):
            return Breakpoint(0, kind, "trap any", condition=cond)
        by_name = {v.lstrip("#").lower(): k for k, v in EXCEPTION_NAMES.items()}
        vector = by_name.get(target.lstrip("#").lower())
        if vector is None:
            vector = parse_int(target, "trap vector")
        if not 0 <= vector < 256:
            raise DebugError(f"vector {vector} is out of range")
        return Breakpoint(0, kind, f"trap {EXCEPTION_NAMES.get(vector, vector)}", condition=cond,
                          vector=vector)
    if kind == "page":
        if target in ("", "any"):
            return Breakpoint(0, kind, "page any (type change, pin, unpin)", condition=cond)
        if target.startswith("pfn:"):
            pfn = evaluate(s.m, s.symbols, target[4:])
            mfn = s.m.domain.pfn_to_mfn(pfn)
            if not s.m.memory.is_valid_mfn(mfn):
                raise DebugError(f"pfn {pfn:#x} has no machine frame")
        else:
            mfn = evaluate(s.m, s.symbols, target.removeprefix("mfn:"))
            if not s.m.memory.is_valid_mfn(mfn):
                raise DebugError(f"mfn {mfn:#x} is outside machine memory")
        return Breakpoint(0, kind, f"page mfn {mfn:#x}", condition=cond, address=mfn)
    if target:
        raise DebugError("break crash takes no argument")
    return Breakpoint(0, "crash", "crash", condition=cond)


def cmd_watch(s: Session, rest: str, kind: str = "watch") -> CommandResult:
    target, cond = _split_condition(rest)
    parts = target.split()
    if not parts:
        raise DebugError(f"{kind} what? (an address, or ma:ADDRESS, and a length)")
    length = parse_int(parts[1], "length") if len(parts) > 1 else s.m.abi.word
    if not 0 < length <= 1 << 20:
        raise DebugError("a watched range is 1 byte to 1 MiB")
    addr = parse_address(s.m, s.symbols, parts[0])
    ranges: list[tuple[int, int]] = []
    if addr.space == "ma":
        if not s.m.memory.contains(addr.value, length):
            raise DebugError(f"ma {addr.value:#x}+{length} is outside machine memory")
        ranges.append((addr.value, length))
        spec = f"ma {addr.value:#x} length {length}"
        va = None
    else:
        va = addr.value
        pos = 0
        while pos < length:
            ma = translate(s.m, va + pos)
            if ma is None:
                raise DebugError(f"{va + pos:#x} is not mapped: a watchpoint is set on the machine "
                                 "frames the address maps to now")
            n = min(length - pos, PAGE_SIZE - ((va + pos) & (PAGE_SIZE - 1)))
            ranges.append((ma, n))
            pos += n
        spec = f"{s.fmt(va)} length {length} (ma {ranges[0][0]:#x})"
    bp = Breakpoint(0, kind, f"{'write' if kind == 'watch' else 'read'} {spec}", condition=cond,
                    ranges=ranges, va=va, length=length)
    s.attach_watch(bp)
    s.breakpoints.add(bp)
    return CommandResult(True, f"Watchpoint {bp.number}: {bp.describe()}", {"number": bp.number})


def _numbers(s: Session, rest: str) -> list[Breakpoint]:
    if not rest.strip():
        return s.breakpoints.listed()
    return [s.breakpoints.get(parse_int(t, "breakpoint number")) for t in rest.split()]


def cmd_delete(s: Session, rest: str) -> CommandResult:
    bps = _numbers(s, rest)
    for bp in bps:
        s.breakpoints.remove(bp.number)
        if bp.kind == "code":
            s.detach_code(bp)
        s.detach_hooks(bp)
    return CommandResult(True, f"deleted {len(bps)} breakpoint(s)")


def _set_enabled(s: Session, rest: str, on: bool) -> CommandResult:
    bps = _numbers(s, rest)
    for bp in bps:
        bp.enabled = on
    return CommandResult(True, f"{'enabled' if on else 'disabled'} "
                               f"{', '.join(str(b.number) for b in bps) or 'nothing'}")


def cmd_condition(s: Session, rest: str) -> CommandResult:
    number, _, expr = rest.strip().partition(" ")
    bp = s.breakpoints.get(parse_int(number, "breakpoint number"))
    bp.condition = Condition(expr) if expr.strip() else None
    if bp.kind == "hypercall":
        bp.at_exit = bp.condition is not None and bool(bp.condition.names() & {"error", "result"})
    return CommandResult(True, f"Breakpoint {bp.number}: {bp.describe()}")


def cmd_ignore(s: Session, rest: str) -> CommandResult:
    parts = rest.split()
    if len(parts) != 2:
        raise DebugError("usage: ignore N COUNT")
    bp = s.breakpoints.get(parse_int(parts[0], "breakpoint number"))
    bp.ignore = parse_int(parts[1], "count")
    return CommandResult(True, f"Will ignore the next {bp.ignore} hits of breakpoint {bp.number}")


# -- misc ---------------------------------------------------------------------------------------------

def cmd_print(s: Session, rest: str) -> CommandResult:
    value = evaluate(s.m, s.symbols, rest)
    name = s.symbols.name_of(value)
    return CommandResult(True, f"{value:#x} ({value})" + (f" <{name}>" if name else ""),
                         {"value": value})


def cmd_xenstore_write(s: Session, rest: str) -> CommandResult:
    from xendbg.machine.xenstore import XenStoreError
    path, _, value = rest.strip().partition(" ")
    if not path:
        raise DebugError("usage: xenstore-write PATH VALUE")
    try:
        s.m.xenstore.write(path, value)
    except XenStoreError as exc:
        raise DebugError(f"xenstore-write {path}: {exc}") from None
    s.m.run_backends()          # a watch that fired goes to the guest's ring now
    return CommandResult(True, f"{path} = {value!r}")


def cmd_history(s: Session, rest: str) -> CommandResult:
    lines = [f"{i:4d}  {line}" for i, line in enumerate(s.history, 1)]
    stops = [f"stop {i}: {st.reason} at {st.where}" for i, st in enumerate(s.stops[-20:], 1)]
    return CommandResult(True, "\n".join(lines + (["recent stops:"] + stops if stops else [])),
                         {"commands": list(s.history)})


def cmd_help(s: Session, rest: str) -> CommandResult:
    topic = rest.strip()
    if not topic:
        width = max(len(c.name) for c in COMMANDS)
        lines = ["Commands (help COMMAND for details; `info` has topics: help info):"]
        lines += [f"  {c.name:<{width}}  {c.summary}" for c in COMMANDS]
        return CommandResult(True, "\n".join(lines))
    head, _, sub = topic.partition(" ")
    if head == "info" and sub.strip():
        t = info.TOPICS.get(info.ALIASES.get(sub.strip(), sub.strip()))
        if t is None:
            raise DebugError(f"no info topic {sub.strip()!r} (help info lists them)")
        return CommandResult(True, f"usage: info {t.usage}\n{t.help}")
    cmd = lookup(head)
    if cmd is None:
        raise DebugError(f"no command {head!r} (help lists them)")
    text = f"usage: {cmd.usage}\n{cmd.help}"
    if cmd.aliases:
        text += f"\naliases: {', '.join(cmd.aliases)}"
    if cmd.name == "info":
        width = max(len(n) for n in info.TOPICS)
        text += "\ntopics:\n" + "\n".join(f"  {n:<{width}}  {t.summary}" for n, t in info.TOPICS.items())
    return CommandResult(True, text)


def _wrap(fn: Callable[[Session, str], str | tuple[str, object]]
          ) -> Callable[[Session, str], CommandResult]:
    def handler(s: Session, rest: str) -> CommandResult:
        out = fn(s, rest)
        if isinstance(out, tuple):
            return CommandResult(True, out[0], out[1])
        return CommandResult(True, out)
    return handler


BREAK_HELP = """Stop the guest when something happens. Forms:
  break ADDRESS|SYMBOL[+OFF] [if COND]     before the instruction at that address
  break hypercall [NAME|any] [if COND]     at the call's entry (registers and decoded arguments);
                                           a condition on `error` or `result` is decided after
                                           the call: break hypercall mmu_update if error
  break event [PORT|virq:NAME|any]         when Xen delivers the event upcall (pending ports shown)
  break trap [VECTOR|#PF|gp|...]           when Xen bounces a trap to the guest's handler
  break page [MFN|pfn:PFN|any]             when a frame's type changes, or it is pinned/unpinned
  break crash                              when the domain crashes
  break console REGEX                      when the guest's console output matches
COND is an expression over registers ($rax or rax) and the stop's names: hypercall name, nr,
arg0..arg5 and the argument names, result, error; event port, pending; trap vector, error_code,
cr2; page mfn; watch value, old, address. Operators: == != < <= > >= and or not + - & | << >> in.
See also: watch, rwatch, delete, enable, disable, condition, ignore, info breakpoints."""

COMMANDS: tuple[Command, ...] = (
    Command("help", "help [COMMAND | info TOPIC]", "list commands, or explain one",
            "Without an argument, list every command; with one, its usage and details.", cmd_help),
    Command("continue", "continue", "run until something stops the guest",
            "Run the guest until a breakpoint, watchpoint, pause, crash, shutdown or a vCPU blocked "
            "forever stops it.", cmd_continue, ("c", "cont"), True),
    Command("pause", "pause", "stop a running guest (from another thread)",
            "Ask the running guest to stop at the next block boundary. The TUI calls this while "
            "the guest runs; in a script the guest is never running when a command runs.",
            cmd_pause),
    Command("stepi", "stepi [N]", "execute N instructions (default 1)",
            "Execute exactly N guest instructions (a hypercall instruction counts as one; a "
            "hypercall breakpoint still stops at its entry).", cmd_stepi, ("si",), True),
    Command("next", "next", "step one instruction, over calls",
            "Like stepi, but a `call` is run to its return (a temporary breakpoint at the return "
            "address, taken when the stack is back where it was).", cmd_next, ("ni", "nexti"),
            True),
    Command("finish", "finish", "run until the current function returns",
            "Run until the current function returns to its caller. The return address comes from "
            "[sp] at a function's first instruction, otherwise from the frame pointer — best "
            "effort, and said so.", cmd_finish, (), True),
    Command("step-hypercall", "step-hypercall", "run to the next hypercall's entry",
            "Run until the guest makes a hypercall and stop before Xen runs it, showing the call "
            "decoded with the guest memory it points to (mmu_update requests, mmuext_op ops, "
            "multicall entries, evtchn structs, …).", cmd_step_hypercall, ("sh",), True),
    Command("finish-hypercall", "finish-hypercall", "make the call stopped at; show what changed",
            "From a hypercall entry: let Xen run the call, stop right after it, and show its "
            "result and what changed in Xen's state (ports, vcpu_info, registered callbacks, "
            "p2m, frame owners, page types and pins, timers). For a multicall, each entry's "
            "result.", cmd_finish_hypercall, ("fh",), True),
    Command("break", "break WHAT [if COND]", "set a breakpoint (code or Xen event)", BREAK_HELP,
            cmd_break, ("b",)),
    Command("watch", "watch ADDRESS|ma:ADDRESS [LENGTH] [if COND]", "stop after a guest write",
            "Stop after the guest writes to the range (default: one word). A guest-virtual "
            "address is translated once, now, to the machine frames it maps to; ma:ADDRESS "
            "watches machine memory. The guest stops at the next block boundary after the access "
            "(which is shown with its instruction). Xen's own writes are not watched.",
            lambda s, r: cmd_watch(s, r, "watch")),
    Command("rwatch", "rwatch ADDRESS|ma:ADDRESS [LENGTH] [if COND]", "stop after a guest read",
            "Like watch, for reads.", lambda s, r: cmd_watch(s, r, "rwatch")),
    Command("delete", "delete [N...]", "delete breakpoints (all without N)",
            "Delete the numbered breakpoints and watchpoints, or all of them.", cmd_delete,
            ("d",)),
    Command("enable", "enable [N...]", "enable breakpoints", "Enable breakpoints (all without N).",
            lambda s, r: _set_enabled(s, r, True)),
    Command("disable", "disable [N...]", "disable breakpoints",
            "Disable breakpoints (all without N); they stay listed.",
            lambda s, r: _set_enabled(s, r, False)),
    Command("condition", "condition N [COND]", "set or remove a breakpoint's condition",
            "Stop at breakpoint N only when COND holds (see help break); no COND removes it.",
            cmd_condition),
    Command("ignore", "ignore N COUNT", "skip the next COUNT hits of a breakpoint",
            "The next COUNT times breakpoint N would stop, it does not (hits are still counted).",
            cmd_ignore),
    Command("info", "info TOPIC [ARGS]", "show machine, Xen and guest state",
            "Show one piece of state; `help info TOPIC` explains each.", info.cmd_info, ("i",)),
    Command("x", "x/FMT ADDRESS", "examine memory (gdb-like)",
            "x/[COUNT][FORMAT][SIZE] ADDRESS. FORMAT: x hex, d signed, u unsigned, o octal, "
            "t binary, c char, a address (symbolized), s string, i instruction. SIZE: b 1, h 2, "
            "w 4, g 8 bytes (default: w, or the word size for a). ADDRESS: an expression (guest "
            "virtual, through the current page tables), or ma:, mfn:, pfn: for machine memory.",
            _wrap(examine.examine)),
    Command("disassemble", "disassemble [ADDRESS|SYMBOL] [COUNT]", "disassemble (symbolized)",
            "Disassemble COUNT instructions (default 16; a whole function when its size is "
            "known) from ADDRESS, or around the current instruction (marked =>). Branch targets "
            "and RIP-relative operands are shown as symbol+offset.", _wrap(examine.disassemble),
            ("disas",)),
    Command("walk", "walk VA", "walk the page tables for a guest-virtual address",
            "Each level's entry: its index, value, frame (mfn and the pfn the M2P gives), flags, "
            "and the page type where the MMU keeps one.", _wrap(examine.walk_va)),
    Command("backtrace", "backtrace [N]", "the call stack (frame pointers, best effort)",
            "Walk the frame-pointer chain from the current frame. Functions built without frame "
            "pointers are skipped or confuse the walk; ORC and DWARF are not used.",
            _wrap(examine.backtrace), ("bt", "where")),
    Command("print", "print EXPR", "evaluate an address expression",
            "Print the value of EXPR (numbers, $registers, symbols, + and -) and its symbol.",
            cmd_print, ("p",)),
    Command("xenstore-write", "xenstore-write PATH VALUE", "write a xenstore node (as dom0)",
            "Write VALUE at PATH as the toolstack would (creating parents); watches fire and "
            "reach the guest's ring at once.", cmd_xenstore_write),
    Command("history", "history", "the commands run so far and the recent stops",
            "The command history of this session, then the last stops.", cmd_history),
)

_BY_NAME: dict[str, Command] = {}
for _c in COMMANDS:
    _BY_NAME[_c.name] = _c
    for _a in _c.aliases:
        _BY_NAME[_a] = _c


def lookup(word: str) -> Command | None:
    return _BY_NAME.get(word)


def run_command(s: Session, line: str) -> CommandResult:
    line = line.strip()
    if not line or line.startswith("#"):
        return CommandResult(True, "")
    word, _, rest = line.partition(" ")
    if word.startswith("x/") or word == "x":
        rest = word[1:] + " " + rest          # "/FMT ADDRESS"
        word = "x"
    cmd = lookup(word)
    if cmd is None:
        close = sorted(n for n in _BY_NAME if n.startswith(word[:2]))[:6]
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        return CommandResult(False, f"unknown command {word!r}{hint}; `help` lists the commands")
    try:
        return cmd.handler(s, rest)
    except DebugError as exc:
        return CommandResult(False, str(exc))
    except Exception as exc:                      # noqa: BLE001 - a bug must not kill the session
        s.internal_errors.append(traceback.format_exc())
        return CommandResult(False, f"xendbg internal error in `{cmd.name}`: "
                                    f"{type(exc).__name__}: {exc}")


__all__ = ["COMMANDS", "Command", "run_command", "lookup", "Address"]

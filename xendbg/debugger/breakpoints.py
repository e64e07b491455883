"""Breakpoints of every kind, their conditions and ignore counts.

One numbered list holds them all, as in gdb: code addresses, and the Xen events only xendbg can stop
on — a hypercall (at its entry, or after it with ``if error``), an event upcall, a trap bounced to
the guest, a page-type change, a crash, console output — and watchpoints on guest-virtual or machine
ranges. Each has an enabled flag, an optional condition, an ignore count and a hit count.

Conditions are small Python-like expressions over names the stop provides: the registers (``rax``,
``$rip`` …), and per kind ``name``/``nr``/``result``/``error``/``arg0``…/the call's own argument names
(hypercall), ``port``/``pending`` (event), ``vector``/``error_code``/``cr2`` (trap), ``mfn`` (page),
``value``/``old``/``address`` (watch). Only comparisons, boolean and arithmetic operators, ``in``,
numbers, strings and those names are allowed; anything else is refused when the breakpoint is set.
"""

from __future__ import annotations

import ast
import operator
import re
from dataclasses import dataclass, field

from xendbg.debugger.memview import DebugError

KINDS = ("code", "hypercall", "event", "trap", "page", "crash", "console", "watch", "rwatch")

_BINOPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
           ast.BitAnd: operator.and_, ast.BitOr: operator.or_, ast.BitXor: operator.xor,
           ast.LShift: operator.lshift, ast.RShift: operator.rshift, ast.Mod: operator.mod,
           ast.FloorDiv: operator.floordiv}
_CMPOPS = {ast.Eq: operator.eq, ast.NotEq: operator.ne, ast.Lt: operator.lt, ast.LtE: operator.le,
           ast.Gt: operator.gt, ast.GtE: operator.ge, ast.In: lambda a, b: a in b,
           ast.NotIn: lambda a, b: a not in b}


class Condition:
    """A parsed condition; ``evaluate(names)`` gives its truth, DebugError on an unknown name."""

    def __init__(self, text: str) -> None:
        self.text = text.strip()
        source = re.sub(r"\$([A-Za-z_])", r"\1", self.text)
        source = re.sub(r"&&", " and ", re.sub(r"\|\|", " or ", source))
        source = re.sub(r"!(?!=)", " not ", source)
        try:
            self._tree = ast.parse(source.strip(), mode="eval").body
        except SyntaxError as exc:
            raise DebugError(f"bad condition {self.text!r}: {exc.msg}") from None
        self._check(self._tree)

    def _check(self, node: ast.AST) -> None:
        allowed = (ast.BoolOp, ast.BinOp, ast.UnaryOp, ast.Compare, ast.Name, ast.Constant,
                   ast.Load, ast.And, ast.Or, ast.Not, ast.USub, ast.Invert, ast.Tuple, ast.List,
                   *_BINOPS, *_CMPOPS)
        for sub in ast.walk(node):
            if not isinstance(sub, allowed):
                raise DebugError(f"condition {self.text!r}: {type(sub).__name__} is not allowed")

    def evaluate(self, names: dict) -> bool:
        return bool(self._eval(self._tree, names))

    def _eval(self, node: ast.AST, names: dict):
        if isinstance(node, ast.Constant):
            return node.value
        if isinstance(node, ast.Name):
            if node.id not in names:
                raise DebugError(f"condition {self.text!r}: unknown name {node.id!r} here")
            return names[node.id]
        if isinstance(node, (ast.Tuple, ast.List)):
            return tuple(self._eval(e, names) for e in node.elts)
        if isinstance(node, ast.BoolOp):
            values = (self._eval(v, names) for v in node.values)
            return all(values) if isinstance(node.op, ast.And) else any(values)
        if isinstance(node, ast.UnaryOp):
            value = self._eval(node.operand, names)
            if isinstance(node.op, ast.Not):
                return not value
            return -value if isinstance(node.op, ast.USub) else ~value
        if isinstance(node, ast.BinOp):
            return _BINOPS[type(node.op)](self._eval(node.left, names), self._eval(node.right, names))
        if isinstance(node, ast.Compare):
            left = self._eval(node.left, names)
            for op, comp in zip(node.ops, node.comparators, strict=True):
                right = self._eval(comp, names)
                if not _CMPOPS[type(op)](left, right):
                    return False
                left = right
            return True
        raise DebugError(f"condition {self.text!r}: cannot evaluate")

    def names(self) -> set[str]:
        return {n.id for n in ast.walk(self._tree) if isinstance(n, ast.Name)}


@dataclass
class Breakpoint:
    number: int
    kind: str
    spec: str                                # what it stops on, for ``info breakpoints``
    enabled: bool = True
    condition: Condition | None = None
    ignore: int = 0
    hits: int = 0
    internal: bool = False                   # a step helper (next, finish): never listed
    # kind-specific
    address: int | None = None               # code: VA; page: mfn
    hypercall: str | None = None             # hypercall: name, None = any
    at_exit: bool = False                    # hypercall: decide after the call (result, error)
    port: int | None = None                  # event: port (None with virq None = any)
    virq: int | None = None
    vector: int | None = None                # trap: None = any
    regex: re.Pattern | None = None          # console
    ranges: list[tuple[int, int]] = field(default_factory=list)   # watch: (ma, length)
    va: int | None = None                    # watch: the VA it was set on, if any
    length: int = 0
    handles: list[object] = field(default_factory=list)         # machine hook handles
    predicate: object = None                 # internal breakpoints: callable(session) -> bool

    def should_stop(self, names: dict) -> bool:
        """Count a hit (if the condition holds) and say whether to stop, honouring the ignore count.
        A condition that cannot be evaluated stops, as in gdb, so the user sees why."""
        if not self.enabled:
            return False
        if self.condition is not None and not self.condition.evaluate(names):
            return False
        self.hits += 1
        if self.ignore > 0:
            self.ignore -= 1
            return False
        return True

    def describe(self) -> str:
        parts = [self.spec]
        if self.condition is not None:
            parts.append(f"if {self.condition.text}")
        if self.ignore:
            parts.append(f"(ignore next {self.ignore})")
        return " ".join(parts)


class BreakpointTable:
    def __init__(self) -> None:
        self.items: dict[int, Breakpoint] = {}
        self._next = 1

    def add(self, bp: Breakpoint) -> Breakpoint:
        if not bp.internal:
            bp.number = self._next
            self._next += 1
            self.items[bp.number] = bp
        return bp

    def get(self, number: int) -> Breakpoint:
        bp = self.items.get(number)
        if bp is None:
            raise DebugError(f"no breakpoint number {number}")
        return bp

    def remove(self, number: int) -> Breakpoint:
        bp = self.get(number)
        del self.items[number]
        return bp

    def of_kind(self, *kinds: str) -> list[Breakpoint]:
        return [bp for bp in self.items.values() if bp.kind in kinds and bp.enabled]

    def listed(self) -> list[Breakpoint]:
        return [self.items[n] for n in sorted(self.items)]

"""The debugger's view of memory and its expressions: addresses, registers, symbols.

The debugger reads memory as the CPU sees it *through the current page tables*, without Xen's
``access_ok`` rule (it may look at the read-only M2P in Xen's hole), or by machine address, or by
pseudo-physical frame. It never writes guest memory behind Xen's back.

Expressions (``break``, ``x``, ``print``, ``info symbol``) are sums of terms: a number (``0x…``,
decimal), a register (``$rip`` or ``rip``), a symbol (``start_kernel``), joined by ``+``/``-``;
``ma:``, ``mfn:`` and ``pfn:`` prefixes name machine or pseudo-physical addresses where that makes
sense.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass

from xendbg.fast.walk import WALK_OK, walk
from xendbg.machine.memory import PAGE_SHIFT, PAGE_SIZE


class DebugError(Exception):
    """A command that cannot do what it was asked; ``str()`` is the message shown."""


@dataclass(frozen=True)
class Address:
    """Where to read: ``space`` is "va" (current page tables) or "ma" (machine)."""

    space: str
    value: int

    def __str__(self) -> str:
        return f"{self.value:#x}" if self.space == "va" else f"ma:{self.value:#x}"


_TERM = re.compile(r"\s*([+-])?\s*(\$?[A-Za-z_.][A-Za-z0-9_.$@]*|0[xX][0-9a-fA-F]+|\d+)\s*")


def registers(m) -> dict[str, int]:
    """The vCPU's registers by name, with ``pc``/``sp``/``fp``; on the 32-bit ABI the 64-bit names
    (``rax``, ``rip`` …) name the 32-bit registers too, so that one script serves both ABIs."""
    regs = m.cpu.regs()
    if not m.is64:
        for name in ("ax", "bx", "cx", "dx", "si", "di", "bp", "sp", "ip", "flags"):
            regs["r" + name] = regs["e" + name]
    regs["pc"] = regs["rip" if m.is64 else "eip"]
    regs["sp"] = regs["rsp" if m.is64 else "esp"]
    regs["fp"] = regs["rbp" if m.is64 else "ebp"]
    return regs


def evaluate(m, symbols, text: str, regs: dict[str, int] | None = None) -> int:
    """The value of an address expression; DebugError names the part that is wrong."""
    text = text.strip()
    if not text:
        raise DebugError("an address or expression is needed")
    pos = 0
    total = 0
    first = True
    while pos < len(text):
        match = _TERM.match(text, pos)
        if match is None or match.end() == pos:
            raise DebugError(f"cannot parse {text[pos:]!r} in {text!r}")
        sign, term = match.group(1), match.group(2)
        if sign is None and not first:
            raise DebugError(f"expected + or - before {term!r} in {text!r}")
        value = _term(m, symbols, term, regs)
        total = total - value if sign == "-" else total + value
        pos = match.end()
        first = False
    return total & ((1 << 64) - 1)


def _term(m, symbols, term: str, regs: dict[str, int] | None) -> int:
    if term[0].isdigit():
        return int(term, 0)
    name = term.lstrip("$")
    if regs is None:
        regs = registers(m)
    if term.startswith("$") or (name in regs and (symbols is None or symbols.resolve(name) is None)):
        if name not in regs:
            raise DebugError(f"no register {term!r}")
        return regs[name]
    sym = symbols.resolve(term) if symbols is not None else None
    if sym is None:
        hint = ""
        if symbols is not None:
            close = symbols.matching(term[:4], 5)
            hint = f" (known names starting {term[:4]!r}: {', '.join(close)})" if close else ""
        raise DebugError(f"no symbol {term!r}{hint}")
    return sym.address


def parse_address(m, symbols, text: str) -> Address:
    """``EXPR`` (a guest VA), ``ma:EXPR``, ``mfn:EXPR`` or ``pfn:EXPR`` (machine addresses)."""
    text = text.strip()
    for prefix in ("ma:", "mfn:", "pfn:"):
        if text.startswith(prefix):
            value = evaluate(m, symbols, text[len(prefix):])
            if prefix == "mfn:":
                value <<= PAGE_SHIFT
            elif prefix == "pfn:":
                mfn = m.domain.pfn_to_mfn(value)
                if not m.memory.is_valid_mfn(mfn):
                    raise DebugError(f"pfn {value:#x} has no machine frame (p2m)")
                value = mfn << PAGE_SHIFT
            return Address("ma", value)
    return Address("va", evaluate(m, symbols, text))


def translate(m, va: int) -> int | None:
    """The machine address the CPU would use for ``va`` now (no permission check), or None."""
    mask = (1 << m.abi.bits) - 1
    status, ma, _perms, _entries = walk(m.memory.bytes, m.cpu.cr3, va & mask, m.abi.page_levels)
    return ma if status == WALK_OK else None


def read(m, addr: Address, length: int) -> bytes:
    """``length`` bytes at ``addr``; DebugError saying where the walk failed."""
    if addr.space == "ma":
        if not m.memory.contains(addr.value, length):
            raise DebugError(f"machine address {addr.value:#x}+{length} is outside machine memory")
        return m.memory.read(addr.value, length)
    out = bytearray()
    va = addr.value
    while length > 0:
        ma = translate(m, va)
        if ma is None:
            raise DebugError(f"cannot access {va:#x}: not mapped in the current page tables")
        n = min(length, PAGE_SIZE - (va & (PAGE_SIZE - 1)))
        out += m.memory.read(ma, n)
        va += n
        length -= n
    return bytes(out)


def read_word(m, va: int) -> int | None:
    try:
        raw = read(m, Address("va", va), m.abi.word)
    except DebugError:
        return None
    return struct.unpack("<Q" if m.abi.word == 8 else "<I", raw)[0]


def parse_int(text: str, what: str) -> int:
    try:
        return int(text, 0)
    except ValueError:
        raise DebugError(f"{what}: {text!r} is not a number") from None

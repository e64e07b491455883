"""Looking at code and memory: ``x``, ``disassemble``, ``walk`` and ``backtrace``; frame state.

Memory is read as the CPU sees it through the current page tables (or by machine address), never
through Xen's guest-access rules (:mod:`.memview`). ``frame_state`` asks the MMU for what it keeps
about a frame (type, counts, pin) in whatever form it has; ``None`` where it keeps nothing.
"""

from __future__ import annotations

import dataclasses

import capstone
from capstone import x86_const as CX

from xendbg.debugger.decode import pfn_note
from xendbg.debugger.memview import Address, DebugError, parse_address, parse_int, read, read_word
from xendbg.debugger.session import Session
from xendbg.fast.walk import WALK_OK, walk
from xendbg.machine.memory import PAGE_SHIFT

NOT_YET = "not available yet"

# -- frames and the MMU -------------------------------------------------------------------------------

def frame_state(m, mfn: int) -> dict | None:
    """The MMU's record of a frame (type, counts, pinned), if the MMU keeps one."""
    mmu = m.mmu
    for attr in ("frame_info", "page_info"):
        fn = getattr(mmu, attr, None)
        if callable(fn):
            info = fn(mfn)
            if info is None or isinstance(info, dict):
                return info
            if dataclasses.is_dataclass(info):
                return dataclasses.asdict(info)
            return dict(vars(info)) if hasattr(info, "__dict__") else None
    pages = getattr(mmu, "pages", None)
    if pages is not None:
        try:
            info = pages[mfn]
        except (IndexError, KeyError, TypeError):
            return None
        if dataclasses.is_dataclass(info):
            return dataclasses.asdict(info)
    return None


def frame_state_text(m, mfn: int) -> str:
    state = frame_state(m, mfn)
    if state is None:
        return f"page type: {NOT_YET} (the MMU keeps no page types yet)"
    if "type" in state:
        pinned = " pinned" if state.get("pinned") else ""
        head = f"page type: {state['type']}{pinned}, type count {state.get('type_count', '?')}, " \
               f"count {state.get('count', '?')}"
        rest = {k: v for k, v in state.items()
                if k not in ("type", "pinned", "type_count", "count", "mfn", "owner", "pfn")}
        return head + ("; " if rest else "") + ", ".join(
            f"{k}={v:#x}" if isinstance(v, int) and not isinstance(v, bool) else f"{k}={v}"
            for k, v in rest.items())
    return "page: " + ", ".join(f"{k}={v:#x}" if isinstance(v, int) and not isinstance(v, bool)
                                else f"{k}={v}" for k, v in state.items())


def walk_va(s: Session, args: str):
    m = s.m
    if not args.strip():
        raise DebugError("usage: walk VA")
    va = parse_address(m, s.symbols, args).value
    levels = m.abi.page_levels
    cr3 = m.cpu.cr3
    status, ma, perms, entries = walk(m.memory.bytes, cr3, va & ((1 << m.abi.bits) - 1), levels)
    top = m.abi.cr3_to_mfn(cr3) if levels == 4 else cr3 >> PAGE_SHIFT
    top_state = frame_state(m, top) if m.memory.is_valid_mfn(top) else None
    top_type = f", type {top_state.get('type', '?')}" if top_state else ""
    lines = [f"walk {s.fmt(va)} from cr3 {cr3:#x} (top table mfn {top:#x}{pfn_note(m, top)}"
             f"{top_type})"]
    names = ("L4", "L3", "L2", "L1") if levels == 4 else ("L3 (PDPT)", "L2", "L1")
    shifts = (39, 30, 21, 12) if levels == 4 else (30, 21, 12)
    rows = []
    for i, entry in enumerate(entries):
        index = (va >> shifts[i]) & (3 if levels == 3 and i == 0 else 511)
        mfn = (entry >> PAGE_SHIFT) & 0xFFFFFFFFFF
        flags = _pte_flags(entry)
        present = entry & 1
        row = f"{names[i]:<9} [{index:3d}] = {entry:#018x}  "
        row += f"mfn {mfn:#x}{pfn_note(m, mfn)} [{flags}]" if present else "not present"
        if present and m.memory.is_valid_mfn(mfn) and i < len(entries) - 1:
            state = frame_state(m, mfn)
            if state is not None:
                row += f" type {state.get('type', '?')}"
        rows.append({"level": names[i], "index": index, "entry": entry, "mfn": mfn})
        lines.append("  " + row)
    if status == WALK_OK:
        rw = "writable" if perms & 1 else "read-only"
        user = "user" if perms & 2 else "supervisor"
        nx = "executable" if perms & 4 else "no-execute"
        lines.append(f"  → ma {ma:#x} (mfn {ma >> PAGE_SHIFT:#x}{pfn_note(m, ma >> PAGE_SHIFT)}), "
                     f"{rw}, {user}, {nx}")
        state_line = frame_state_text(m, ma >> PAGE_SHIFT)
        lines.append("  " + state_line)
    else:
        lines.append({1: "  → not mapped", 2: "  → an entry points outside machine memory",
                      3: "  → not a canonical address"}.get(status, "  → fault"))
    return "\n".join(lines), {"va": va, "ma": ma if status == WALK_OK else None, "levels": rows}


def _pte_flags(entry: int) -> str:
    names = []
    for bit, name in ((0, "P"), (1, "RW"), (2, "US"), (3, "PWT"), (4, "PCD"), (5, "A"), (6, "D"),
                      (7, "PS"), (8, "G"), (63, "NX")):
        if entry >> bit & 1:
            names.append(name)
    return " ".join(names) or "-"


# -- memory ---------------------------------------------------------------------------------------------

_SIZES = {"b": 1, "h": 2, "w": 4, "g": 8}


def examine(s: Session, rest: str):
    m = s.m
    fmt, _, target = rest.strip().partition(" ")
    if not fmt.startswith("/"):
        fmt, target = "/", rest.strip()
    spec = fmt[1:]
    digits = ""
    while spec and spec[0].isdigit():
        digits, spec = digits + spec[0], spec[1:]
    count = int(digits) if digits else 1
    letter, size = "x", None
    for ch in spec:
        if ch in _SIZES:
            size = _SIZES[ch]
        elif ch in "xduotcasi":
            letter = ch
        else:
            raise DebugError(f"x: unknown format letter {ch!r}")
    if not target:
        raise DebugError("x needs an address")
    addr = parse_address(m, s.symbols, target)
    if not 0 < count <= 4096:
        raise DebugError("x: count must be 1..4096")
    if letter == "i":
        return disassemble(s, f"{target} {count}")
    if letter == "s":
        lines = []
        pos = addr.value
        for _ in range(count):
            raw = read(m, Address(addr.space, pos), 1)
            out = bytearray()
            while raw != b"\0" and len(out) < 4096:
                out += raw
                pos += 1
                raw = read(m, Address(addr.space, pos), 1)
            lines.append(f"{_addr_label(s, Address(addr.space, pos - len(out)))}: "
                         f"{bytes(out).decode('latin-1')!r}")
            pos += 1
        return "\n".join(lines)
    if letter == "a":
        size = size or m.abi.word
    size = size or (1 if letter == "c" else 4)
    raw = read(m, addr, count * size)
    values = [int.from_bytes(raw[i * size:(i + 1) * size], "little") for i in range(count)]
    per_line = max(1, 16 // size) if letter not in "a" else 2
    lines = []
    for start in range(0, count, per_line):
        chunk = values[start:start + per_line]
        cells = [_cell(s, v, letter, size) for v in chunk]
        label = _addr_label(s, Address(addr.space, addr.value + start * size))
        lines.append(f"{label}:  " + "  ".join(cells))
    return "\n".join(lines), {"values": values, "size": size}


def _addr_label(s: Session, addr: Address) -> str:
    return f"ma:{addr.value:#x}" if addr.space == "ma" else s.fmt(addr.value)


def _cell(s: Session, v: int, letter: str, size: int) -> str:
    bits = size * 8
    if letter == "x":
        return f"{v:#0{size * 2 + 2}x}"
    if letter == "d":
        return str(v - (1 << bits) if v >> (bits - 1) else v)
    if letter == "u":
        return str(v)
    if letter == "o":
        return f"{v:#o}"
    if letter == "t":
        return f"{v:0{bits}b}"
    if letter == "c":
        return repr(chr(v & 0xFF))
    name = s.symbols.name_of(v)
    return f"{v:#x}" + (f" <{name}>" if name else "")


def disassemble(s: Session, rest: str):
    m = s.m
    parts = rest.split()
    ip = m.cpu.ip
    count = 16
    if parts:
        start = parse_address(m, s.symbols, parts[0])
        if start.space != "va":
            raise DebugError("disassemble works on guest-virtual addresses")
        start_va = start.value
        if len(parts) > 1:
            count = parse_int(parts[1], "count")
        else:
            sym = s.symbols.lookup(start_va)
            if sym is not None and sym[1] == 0 and sym[0].size:
                count = 10_000          # to the end of the function
    else:
        found = s.symbols.lookup(ip)
        start_va = ip - found[1] if found is not None and found[1] <= 48 else ip
    end = None
    found = s.symbols.lookup(start_va)
    if found is not None and found[0].size:
        end = found[0].address + found[0].size
    md = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64 if m.is64 else capstone.CS_MODE_32)
    md.detail = True
    length = min(count * 15, 64 * 1024)
    if end is not None:
        length = min(length, max(end - start_va, 1))
    try:
        code = read(m, Address("va", start_va), length)
    except DebugError:
        code = b""
        for i in range(length):            # read what is mapped, up to the first hole
            try:
                code += read(m, Address("va", start_va + i), 1)
            except DebugError:
                break
        if not code:
            raise
    lines = []
    rows = []
    for insn in md.disasm(code, start_va):
        if len(lines) >= count:
            break
        mark = "=>" if insn.address == ip else "  "
        text = f"{insn.mnemonic} {insn.op_str}".strip()
        note = operand_symbol(s, insn)
        lines.append(f"{mark} {s.fmt(insn.address)}:  {text}" + (f"    <{note}>" if note else ""))
        rows.append({"address": insn.address, "text": text, "symbol": note})
    if not lines:
        raise DebugError(f"nothing to disassemble at {start_va:#x}")
    return "\n".join(lines), {"insns": rows}


def operand_symbol(s: Session, insn) -> str | None:
    """symbol+off of a branch target, RIP-relative operand or absolute address in ``insn``."""
    try:
        operands = insn.operands
    except capstone.CsError:
        return None
    for op in operands:
        value = None
        if op.type == CX.X86_OP_IMM:
            value = op.imm
            if not (insn.group(capstone.CS_GRP_JUMP) or insn.group(capstone.CS_GRP_CALL) or
                    value > 0xFFFF):
                # A small immediate is only named when a symbol starts exactly there
                # (GRUB links at 0 and calls through movabs'd registers).
                found = s.symbols.lookup(value)
                if found is None or found[1]:
                    value = None
        elif op.type == CX.X86_OP_MEM:
            if op.mem.base == CX.X86_REG_RIP:
                value = insn.address + insn.size + op.mem.disp
            elif op.mem.base == 0 and op.mem.index == 0 and op.mem.disp > 0xFFFF:
                value = op.mem.disp
        if value is not None:
            name = s.symbols.name_of(value & ((1 << 64) - 1))
            if name:
                return name
    return None


def backtrace(s: Session, rest: str):
    m = s.m
    limit = parse_int(rest, "frame count") if rest.strip() else 32
    word = m.abi.word
    ip = m.cpu.ip
    regs = m.cpu.regs()
    sp, fp = regs["rsp" if m.is64 else "esp"], regs["rbp" if m.is64 else "ebp"]
    lines = ["(frame-pointer walk, best effort: functions without frame pointers are missed)",
             f"#0  {s.fmt(ip)}"]
    frames = [ip]
    found = s.symbols.lookup(ip)
    if found is not None and found[1] == 0:
        ret = read_word(m, sp)
        if ret:
            lines.append(f"#1  {s.fmt(ret)}   (return address at [sp]: at the function's entry)")
            frames.append(ret)
    seen = set()
    while len(frames) < limit and fp and fp not in seen:
        seen.add(fp)
        ret = read_word(m, fp + word)
        nxt = read_word(m, fp)
        if not ret or nxt is None:
            break
        lines.append(f"#{len(frames)}  {s.fmt(ret)}   (frame at {fp:#x})")
        frames.append(ret)
        if nxt <= fp:
            break
        fp = nxt
    if len(frames) == 1:
        lines.append("(no frame chain: rbp does not point at a readable frame)")
    return "\n".join(lines), {"frames": frames}

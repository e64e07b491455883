"""Writable page tables (Xen's ``pv/ro-page-fault.c``, ``ptwr_emulated_update``).

With ``vm_assist(VMASST_TYPE_writable_pagetables)`` a guest kernel may write its L1 page tables
as if they were ordinary memory even though Xen maps them read-only: the store faults, and Xen
emulates it as a validated update instead of bouncing the #PF. The conditions (all of them, else
the #PF goes to the guest with its error code and CR2):

* the assist is enabled, and the fault is a write to a present page, not a reserved-bit fault nor
  an instruction fetch, made by the guest kernel;
* the L1 entry that maps CR2 in the current page tables is present and read-only, and the frame
  it maps is a validated L1 table of the domain (only L1s: writes to higher levels always fault);
* the instruction is one xendbg can emulate — a plain store (``mov``), ``xchg``, ``cmpxchg``,
  ``cmpxchg8b``, ``and``/``or``/``xor``/``add``/``sub``, ``bts``/``btr``/``btc`` with a memory
  destination — and the store is naturally aligned;
* the resulting entry passes ``get_page_from_l1e`` (a store of part of an entry is merged with the
  rest of it first). One exception, as in Xen: a 32-bit guest that writes the high half of a PAE
  entry before its low half gets the entry written not-present, expecting the low half next.

The update then takes the new entry's references, drops the old one's, applies the instruction's
register and flag effects and moves RIP past it. A refused store is recorded as a rejection.
"""

from __future__ import annotations

import capstone
from capstone import x86_const as C
from unicorn import x86_const as U

from xendbg.fast.walk import WALK_OK, walk
from xendbg.machine.abi import xen as X
from xendbg.machine.abi.errno import EINVAL

from ._validate import T_L1
from .page_types import _P, _RW, entry_mfn

PFEC_PRESENT, PFEC_WRITE, PFEC_USER, PFEC_RSVD, PFEC_INSN = 1, 2, 4, 8, 16
_ALU = {"and", "or", "xor", "add", "sub"}
_BIT = {"bts", "btr", "btc"}
_FLAGS = {"cf": 1 << 0, "pf": 1 << 2, "af": 1 << 4, "zf": 1 << 6, "sf": 1 << 7, "of": 1 << 11}
_ARITH_FLAGS = sum(_FLAGS.values())
_FULL32 = {"eax": "rax", "ebx": "rbx", "ecx": "rcx", "edx": "rdx", "esi": "rsi", "edi": "rdi",
           "ebp": "rbp", "esp": "rsp", **{f"r{i}d": f"r{i}" for i in range(8, 16)}}
_disassemblers: dict[int, capstone.Cs] = {}


class Unhandleable(Exception):
    """The store cannot be emulated (Xen's X86EMUL_UNHANDLEABLE); the message says why."""


def ptwr_do_page_fault(m, vcpu, cr2: int, error_code: int) -> bool:
    if not m.domain.vm_assist >> X.VMASST_TYPE_writable_pagetables & 1:
        return False
    if error_code & (PFEC_RSVD | PFEC_INSN) or \
            error_code & (PFEC_PRESENT | PFEC_WRITE) != PFEC_PRESENT | PFEC_WRITE:
        return False
    if (m.is64 and not vcpu.kernel_mode) or (not m.is64 and m.cpu.cpl() != 1):
        return False
    levels = m.abi.page_levels
    status, _ma, _perms, entries = walk(m.memory.bytes, m.cpu.cr3, cr2, levels)
    if status != WALK_OK or len(entries) != levels:
        return False
    pte = entries[-1]
    if pte & (_P | _RW) != _P:
        return False
    mmu = m.mmu
    pt = mmu.pt
    l1mfn = entry_mfn(pte)
    if not pt.valid_table(l1mfn, T_L1) or int(pt.owner[l1mfn]) != m.domain.domid:
        return False
    pt.begin()
    ip = m.cpu.ip
    try:
        insn = _decode(m, ip)
        return _emulate(m, insn, cr2, l1mfn, ip)
    except Unhandleable as why:
        pt.refuse(-EINVAL, f"writable page table: {why}", l1mfn, (cr2 & 0xFFF) >> 3)
        mmu.reject(f"ptwr at {ip:#x}", -EINVAL)
        return False


def _decode(m, ip: int):
    mode = 64 if m.is64 else 32
    md = _disassemblers.get(mode)
    if md is None:
        md = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64 if m.is64 else
                         capstone.CS_MODE_32)
        md.detail = True
        _disassemblers[mode] = md
    for length in (15, 8, 4, 2, 1):
        code = m.guest.read(ip, length)
        if code is not None:
            break
    else:
        raise Unhandleable("the faulting instruction cannot be read")
    insn = next(md.disasm(code, ip, 1), None)
    if insn is None:
        raise Unhandleable("the faulting instruction does not decode")
    return insn


class _Regs:
    def __init__(self, m, insn) -> None:
        self.m = m
        self.insn = insn
        self.uc = m.cpu.uc
        self.writes: list[tuple[int, int]] = []

    def _id(self, name: str) -> int:
        reg = getattr(U, "UC_X86_REG_" + name.upper(), None)
        if reg is None:
            raise Unhandleable(f"register {name}")
        return reg

    def read(self, reg: int) -> int:
        return self.uc.reg_read(self._id(self.insn.reg_name(reg)))

    def read_name(self, name: str) -> int:
        return self.uc.reg_read(self._id(name))

    def write(self, reg: int, value: int, size: int) -> None:
        self.write_name(self.insn.reg_name(reg), value, size)

    def write_name(self, name: str, value: int, size: int) -> None:
        if size == 4 and self.m.is64:
            name = _FULL32.get(name, name)         # a 32-bit write zero-extends in long mode
        self.writes.append((self._id(name), value & ((1 << (8 * size)) - 1)))


def _operand_value(regs: _Regs, op, size: int) -> int:
    if op.type == C.X86_OP_REG:
        return regs.read(op.reg) & ((1 << (8 * size)) - 1)
    if op.type == C.X86_OP_IMM:
        return op.imm & ((1 << (8 * size)) - 1)
    raise Unhandleable("unexpected operand")


def _parity(value: int) -> int:
    return 0 if bin(value & 0xFF).count("1") & 1 else _FLAGS["pf"]


def _logic_flags(result: int, size: int) -> int:
    top = 1 << (8 * size - 1)
    return (_FLAGS["zf"] if result == 0 else 0) | (_FLAGS["sf"] if result & top else 0) \
        | _parity(result)


def _arith_flags(a: int, b: int, result: int, size: int, subtract: bool) -> int:
    bits = 8 * size
    mask = (1 << bits) - 1
    top = 1 << (bits - 1)
    flags = _logic_flags(result & mask, size)
    if subtract:
        carry = a < b
        overflow = bool((a ^ b) & (a ^ result) & top)
    else:
        carry = a + b > mask
        overflow = bool(~(a ^ b) & (a ^ result) & top)
    if (a ^ b ^ result) & 0x10:
        flags |= _FLAGS["af"]
    return flags | (_FLAGS["cf"] if carry else 0) | (_FLAGS["of"] if overflow else 0)


def _emulate(m, insn, cr2: int, l1mfn: int, ip: int) -> bool:
    """Work out the store, validate it as an L1 update, then commit memory and registers."""
    mnemonic = insn.mnemonic.removeprefix("lock ").strip()
    ops = list(insn.operands)
    mem = [op for op in ops if op.type == C.X86_OP_MEM]
    if len(mem) != 1:
        raise Unhandleable(f"{mnemonic} is not a store this emulator knows")
    size = mem[0].size
    if size not in (1, 2, 4, 8) or cr2 & (size - 1):
        raise Unhandleable(f"{size}-byte store at {cr2:#x} is not naturally aligned")
    regs = _Regs(m, insn)
    table = m.mmu.pt.table(l1mfn)
    index = (cr2 & 0xFFF) >> 3
    shift = (cr2 & 7) * 8
    mask = (1 << (8 * size)) - 1
    full = int(table[index])
    cur = (full >> shift) & mask
    flags = None                                   # (mask of flags written, their values)
    value: int | None
    cmpxchg = False
    if mnemonic == "mov" and ops[0].type == C.X86_OP_MEM:
        value = _operand_value(regs, ops[1], size)
    elif mnemonic == "xchg":
        reg = ops[1] if ops[0].type == C.X86_OP_MEM else ops[0]
        value = _operand_value(regs, reg, size)
        regs.write(reg.reg, cur, size)
    elif mnemonic == "cmpxchg":
        acc = {1: "al", 2: "ax", 4: "eax", 8: "rax"}[size]
        expected = regs.read_name(acc) & mask
        result = (expected - cur) & mask
        flags = (_ARITH_FLAGS, _arith_flags(expected, cur, result, size, True))
        cmpxchg = True
        if expected == cur:
            value = _operand_value(regs, ops[1], size)
        else:
            value = None
            regs.write_name(acc, cur, size)
    elif mnemonic == "cmpxchg8b":
        expected = (regs.read_name("edx") & 0xFFFFFFFF) << 32 | regs.read_name("eax") & 0xFFFFFFFF
        cmpxchg = True
        if expected == cur:
            value = (regs.read_name("ecx") & 0xFFFFFFFF) << 32 | regs.read_name("ebx") & 0xFFFFFFFF
            flags = (_FLAGS["zf"], _FLAGS["zf"])
        else:
            value = None
            regs.write_name("eax", cur & 0xFFFFFFFF, 4)
            regs.write_name("edx", cur >> 32, 4)
            flags = (_FLAGS["zf"], 0)
    elif mnemonic in _ALU and ops[0].type == C.X86_OP_MEM:
        src = _operand_value(regs, ops[1], size)
        if mnemonic in ("and", "or", "xor"):
            value = {"and": cur & src, "or": cur | src, "xor": cur ^ src}[mnemonic]
            flags = (_ARITH_FLAGS, _logic_flags(value, size))
        else:
            raw = cur + src if mnemonic == "add" else cur - src
            value = raw & mask
            flags = (_ARITH_FLAGS, _arith_flags(cur, src, value, size, mnemonic == "sub"))
    elif mnemonic in _BIT and ops[0].type == C.X86_OP_MEM:
        bit = _operand_value(regs, ops[1], 8 if ops[1].type == C.X86_OP_REG else size)
        if ops[1].type == C.X86_OP_IMM:
            bit &= 8 * size - 1
        elif bit >= 8 * size:
            raise Unhandleable("a bit offset outside the operand")
        old_bit = cur >> bit & 1
        value = {"bts": cur | 1 << bit, "btr": cur & ~(1 << bit), "btc": cur ^ 1 << bit}[mnemonic]
        flags = (_FLAGS["cf"], _FLAGS["cf"] if old_bit else 0)
    else:
        raise Unhandleable(f"{mnemonic} is not a store this emulator knows")

    if value is not None:
        new_full = (full & ~(mask << shift)) | (value << shift)
        if not _ptwr_update(m, l1mfn, index, full, new_full, size, shift, cmpxchg):
            return False
    uc = m.cpu.uc
    for reg, val in regs.writes:
        uc.reg_write(reg, val)
    if flags is not None:
        fmask, fval = flags
        cur_flags = uc.reg_read(m.cpu.flags_reg)
        uc.reg_write(m.cpu.flags_reg, (cur_flags & ~fmask) | fval)
    m.cpu.ip = ip + insn.size
    return True


def _ptwr_update(m, l1mfn: int, index: int, old: int, new: int, size: int, shift: int,
                 cmpxchg: bool) -> bool:
    mmu = m.mmu
    pt = mmu.pt
    rc, adjusted = pt.get_page_from_l1e(new, l1mfn, index)
    if rc:
        if not m.is64 and size == 4 and shift == 32 and not cmpxchg and new & _P:
            # A PAE guest writing the high half first: write it not-present, the low half is next.
            pt.why = None
            adjusted = new & ~_P
        else:
            mmu.reject("ptwr", rc)
            return False
    pt.table(l1mfn)[index] = adjusted
    pt.put_page_from_l1e(old)
    mmu.history.ptwr(l1mfn, index, old, adjusted)
    return True

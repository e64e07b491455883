"""Random hypercall arguments: numbers, pointers of every kind, and the structures they point to.

One generator per hypercall that takes structures (``GENERATORS``), written from the public headers
(``shared/reference/ABI.md``); every other number gets generic arguments. A generator returns the
register arguments and writes what they point to through :class:`Ctx`, which decides — from the
seeded random stream — whether a pointer is good (an arena buffer holding the structure), or bad:
unmapped, read-only, Xen's, non-canonical, crossing into one of those, or any word at all.
Structured contents are themselves replaced by random bytes some of the time.

Generators are written for the rows that have no handler yet too (``mmu_update``, ``mmuext_op``,
``update_va_mapping``, ``memory_op``, ``vcpu_op``, ``grant_table_op``, ``set_timer_op``), so that
the day a handler lands it is fuzzed with meaningful input.
"""

from __future__ import annotations

import random
import struct
from collections.abc import Callable

from xendbg.machine.abi import xen as X

INTERESTING32 = (0, 1, 2, 3, 4, 7, 8, 15, 16, 31, 32, 63, 64, 127, 128, 255, 256, 511, 512, 1023,
                 1024, 4095, 4096, 4097, 0x7FFF, 0x8000, 0xFFFF, 0x10000, 0x7FFFFFFF, 0x80000000,
                 0xFFFFFFFE, 0xFFFFFFFF)
U64 = (1 << 64) - 1
DOMIDS = (X.DOMID_SELF, 0, 1, 2, X.DOMID_IO, X.DOMID_XEN, X.DOMID_COW, X.DOMID_INVALID,
          X.DOMID_IDLE, 0xFFFF)


class Ctx:
    """Argument-building context for one hypercall (or one multicall batch)."""

    def __init__(self, rng: random.Random, target) -> None:
        self.rng = rng
        self.t = target
        self.bits = target.bits
        self.word = target.word
        self.wfmt = "Q" if self.word == 8 else "I"
        self.mask = target.word_mask
        self.cursor = 0
        self.depth = 0
        self.buffers: list[tuple[int, bytes]] = []     # (va, bytes written) for the report
        self.insn = ""                                  # instruction cases: what ran, with
        self.insn_regs: list[int] = []                  # (rax, rcx, rdx)

    # -- scalars -----------------------------------------------------------------------------------
    def chance(self, p: float) -> bool:
        return self.rng.random() < p

    def pick(self, seq):
        return seq[self.rng.randrange(len(seq))]

    def small(self, hi: int = 16) -> int:
        return self.rng.randrange(hi)

    def u32(self) -> int:
        return self.pick(INTERESTING32) if self.chance(0.6) else self.rng.getrandbits(32)

    def word_val(self) -> int:
        r = self.rng.random()
        if r < 0.3:
            return self.small(64)
        if r < 0.6:
            return self.pick(INTERESTING32)
        if r < 0.75:
            return self.pick((self.mask, self.mask - 1, 1 << (self.bits - 1), (1 << (self.bits - 1)) - 1))
        return self.rng.getrandbits(self.bits)

    def cmd(self, n: int) -> int:
        """A sub-command: mostly one of the ``n`` defined ones, sometimes just past them or wild."""
        r = self.rng.random()
        if r < 0.85:
            return self.small(n)
        if r < 0.95:
            return n + self.small(4)
        return self.word_val()

    def domid(self) -> int:
        return self.pick(DOMIDS) if self.chance(0.9) else self.rng.getrandbits(16)

    # -- addresses -----------------------------------------------------------------------------------
    def _in(self, ranges) -> int:
        lo, hi = self.pick(ranges)
        return lo + self.rng.randrange(max(1, hi - lo)) & ~(self.pick((1, 4, 8, 8, 4096)) - 1)

    def ptr(self) -> int:
        """Any pointer at all, of any kind."""
        t = self.t
        r = self.rng.random()
        if r < 0.35:
            return self._in(t.rw_ranges)
        if r < 0.45:
            return self._in(t.ro_ranges)
        if r < 0.6:
            return self.pick(t.unmapped)
        if r < 0.75:
            return self.pick(t.xen_addrs)
        if r < 0.8 and t.noncanonical:
            return self.pick(t.noncanonical)
        if r < 0.9:
            base, _kind = self.pick(t.crossing)
            return (base - self.pick((1, 2, 4, 8, 12, 16, 24))) & self.mask
        return self.rng.getrandbits(self.bits)

    def code_addr(self) -> int:
        """A callback or handler address: mostly the sentinel, or guest code, or anything."""
        t = self.t
        r = self.rng.random()
        if r < 0.5:
            return t.scratch.sentinel_va
        if r < 0.6:
            return 0
        if r < 0.7 and t.hypercall_page is not None:
            return t.hypercall_page + 32 * self.small(64)
        if r < 0.8:
            lo, hi = t.kernel_span
            return lo + self.rng.randrange(max(1, hi - lo))
        return self.ptr()

    def page_va(self) -> int:
        return self.ptr() & ~0xFFF & self.mask

    def mfn(self) -> int:
        t = self.t
        r = self.rng.random()
        if r < 0.3:
            return self.pick(t.own_mfns)
        if r < 0.45:
            return self.pick(t.pt_mfns)
        if r < 0.55:
            return self.pick(t.scratch_mfns)
        if r < 0.65:
            return self.pick(t.special_mfns)
        if r < 0.8:
            return self.pick(t.xen_mfns)
        if r < 0.88 and t.other_mfns:
            return self.pick(t.other_mfns)
        return self.pick(t.bad_mfns)

    def maddr(self, align: int = 8) -> int:
        off = self.rng.randrange(4096)
        if self.chance(0.85):
            off &= ~(align - 1)
        return ((self.mfn() << 12) | off) & U64

    def pte(self) -> int:
        flags = self.pick((0x67, 0x65, 0x63, 0x27, 0x25, 0x7, 0x5, 0x1, 0x0, 0xE7, 0x167, 0x80))
        if self.chance(0.3):
            flags = self.rng.getrandbits(12)
        nx = (1 << 63) if self.chance(0.3) else 0
        if self.chance(0.1):
            return self.rng.getrandbits(64)
        return (nx | (self.mfn() << 12) | flags) & U64

    def port(self) -> int:
        ports = list(self.t.m.evtchn.ports)
        r = self.rng.random()
        if r < 0.5 and ports:
            return self.pick(ports)
        if r < 0.8:
            return self.small(12)
        nr = self.t.m.evtchn.nr_ports
        return self.pick((nr - 1, nr, nr + 1, 0xFFFFFFFF, self.rng.getrandbits(32)))

    # -- memory --------------------------------------------------------------------------------------
    def _arena(self, size: int) -> int | None:
        s = self.t.scratch
        start = (self.cursor + 15) & ~15
        if start + size > s.arena_size:
            start = 0
            if size > s.arena_size:
                return None
        self.cursor = start + size
        return s.arena_va + start

    def buf(self, data: bytes, good: float = 0.85) -> int:
        """A pointer to ``data``: mostly an arena buffer holding it (or random bytes instead)."""
        if data and self.chance(0.12):
            data = self.rng.randbytes(len(data) if self.chance(0.7) else self.small(2 * len(data) + 1))
        if self.chance(good):
            va = self._arena(max(len(data), 1))
            if va is not None:
                self._write(va, data)
                return va
        if self.chance(0.4):
            # A pointer whose structure starts in good memory and runs into bad memory.
            base, _kind = self.pick(self.t.crossing)
            cut = self.rng.randrange(1, max(2, min(len(data), 64)))
            va = (base - cut) & self.mask
            self._write(va, data[:cut])
            return va
        return self.ptr()

    def tail(self, data: bytes, slack: int) -> int:
        """Put ``data`` at the very end of the mapped area, ``slack`` bytes short of it: an array
        whose count runs past its end soon reaches the unmapped page after it (-EFAULT) instead of
        sending Xen through hundreds of thousands of entries of mapped memory."""
        va = self.t.scratch.last_page_va + 4096 - len(data) - slack
        self._write(va, data)
        return va

    def out(self, size: int) -> int:
        """A pointer for Xen to write ``size`` bytes to (random old contents)."""
        return self.buf(self.rng.randbytes(size), good=0.8)

    def _write(self, va: int, data: bytes) -> None:
        if data and self.t.m.guest.write(va, data):
            if len(self.buffers) < 64:
                self.buffers.append((va, data[:64]))

    def pack_words(self, *values: int) -> bytes:
        return struct.pack(f"<{len(values)}{self.wfmt}", *(v & self.mask for v in values))


# -- argument generators ------------------------------------------------------------------------

def generic(c: Ctx) -> list[int]:
    out = []
    for _ in range(6):
        r = c.rng.random()
        out.append(c.word_val() if r < 0.5 else c.buf(c.rng.randbytes(c.small(128))) if r < 0.8
                   else c.ptr())
    return out


def g_set_trap_table(c: Ctx) -> list[int]:
    if c.chance(0.05):
        return [0]
    entries = b""
    for _ in range(c.small(6)):
        vector = c.small(32) if c.chance(0.7) else c.small(256)
        flags = c.pick((0, 3, 4, 7)) if c.chance(0.8) else c.small(256)
        cs = c.t.abi.kernel_cs if c.chance(0.8) else c.rng.getrandbits(16)
        addr = c.code_addr() or 1
        entries += struct.pack("<BBH4xQ", vector, flags, cs, addr) if c.bits == 64 else \
            struct.pack("<BBHI", vector, flags, cs, addr & 0xFFFFFFFF)
    if c.chance(0.85):
        entries += bytes(c.t.abi.trap_info_size)
    return [c.buf(entries)]


def _mmu_update_list(c: Ctx, n: int) -> bytes:
    reqs = b""
    for _ in range(n):
        ptr = c.maddr() & ~3 | (c.small(4) if c.chance(0.9) else 0)
        reqs += struct.pack("<QQ", ptr, c.pte())
    return reqs


def g_mmu_update(c: Ctx) -> list[int]:
    n = c.small(6)
    reqs = _mmu_update_list(c, n)
    done = 0 if c.chance(0.3) else c.out(4)
    fd = X.DOMID_SELF if c.chance(0.7) else c.domid() | (c.domid() << 16 if c.chance(0.2) else 0)
    if c.chance(0.85):
        return [c.buf(reqs), n, done, fd]
    return [c.tail(reqs, 16 * c.small(3)), c.u32(), done, fd]


def g_set_gdt(c: Ctx) -> list[int]:
    entries = c.pick((0, 1, 8, 256, 512, 513, 1024, 7167, 7168, 7169, 8192)) if c.chance(0.8) \
        else c.word_val()
    frames = [c.mfn() for _ in range(max(1, min(16, (entries + 511) // 512)))]
    return [c.buf(c.pack_words(*frames)), entries]


def g_stack_switch(c: Ctx) -> list[int]:
    ss = c.pick((c.t.abi.kernel_ss, c.t.abi.kernel_ss & ~3, 0, 0xE010)) if c.chance(0.7) \
        else c.rng.getrandbits(16)
    sp = c.t.scratch.stack_top if c.chance(0.4) else c.ptr()
    return [ss, sp]


def g_set_callbacks(c: Ctx) -> list[int]:
    if c.bits == 64:
        return [c.code_addr(), c.code_addr(), c.code_addr()]
    cs = c.t.abi.kernel_cs
    return [cs if c.chance(0.8) else c.rng.getrandbits(16), c.code_addr(),
            cs if c.chance(0.8) else c.rng.getrandbits(16), c.code_addr()]


def _sched_cmd(c: Ctx, n: int) -> int:
    """Blocking and shutting down end a fuzzed domain: tried, but less often than the rest."""
    cmd = c.cmd(n)
    if cmd in (X.SCHEDOP_block, X.SCHEDOP_shutdown) and c.chance(0.6):
        cmd = c.pick((X.SCHEDOP_yield, X.SCHEDOP_poll, X.SCHEDOP_shutdown_code,
                      X.SCHEDOP_remote_shutdown, n + 1))
    return cmd


def g_sched_op_compat(c: Ctx) -> list[int]:
    return [_sched_cmd(c, 6), c.small(8) if c.chance(0.7) else c.word_val()]


def g_debugreg(c: Ctx) -> list[int]:
    reg = c.small(9) if c.chance(0.9) else c.word_val()
    return [reg, c.code_addr() if c.chance(0.5) else c.word_val()]


def _descriptor(c: Ctx) -> int:
    if c.chance(0.3):
        return c.rng.getrandbits(64)
    base, limit = c.rng.getrandbits(32), c.rng.getrandbits(20)
    access = c.pick((0x9A, 0xFA, 0x92, 0xF2, 0xBA, 0xB2, 0x89, 0x82, 0x8C, 0xEC, 0x00, 0x1A))
    flags = c.pick((0xC, 0xA, 0x4, 0x0, 0x2))
    return ((base >> 24) << 56 | flags << 52 | (limit >> 16) << 48 | access << 40
            | ((base >> 16) & 0xFF) << 32 | (base & 0xFFFF) << 16 | (limit & 0xFFFF))


def g_update_descriptor(c: Ctx) -> list[int]:
    ma, desc = c.maddr(), _descriptor(c)
    if c.bits == 64:
        return [ma, desc]
    return [ma & 0xFFFFFFFF, ma >> 32, desc & 0xFFFFFFFF, desc >> 32]


def g_memory_op(c: Ctx) -> list[int]:
    cmd = c.cmd(28)
    w = c.word
    if cmd in (0, 1, 6):           # increase/decrease_reservation, populate_physmap
        extents = c.buf(c.pack_words(*[c.mfn() if c.chance(0.5) else c.small(4096)
                                       for _ in range(c.small(4))]))
        nr = c.small(5) if c.chance(0.8) else c.word_val()
        body = c.pack_words(extents, nr) + struct.pack("<IIH", c.small(10), c.u32(), c.domid())
    elif cmd in (9, 10):           # memory_map, machine_memory_map
        body = struct.pack("<I", c.small(200) if c.chance(0.8) else c.u32()) + \
            (b"\0" * (w - 4)) + c.pack_words(c.out(20 * c.small(8)))
    elif cmd == 7:                 # add_to_physmap
        body = struct.pack("<HHI", c.domid(), c.small(4), c.small(6)) + \
            c.pack_words(c.word_val(), c.small(8192))
    else:
        body = c.rng.randbytes(c.small(64) + 8)
    arg = c.buf(body) if c.chance(0.8) else c.out(48)
    return [cmd, arg]


def _multicall_entries(c: Ctx, n: int) -> bytes:
    out = b""
    for _ in range(n):
        nr = choose_nr(c.rng, for_multicall=True)
        gen = GENERATORS.get(nr, generic)
        if nr == X.HYPERVISOR_multicall and c.depth > 1:
            gen = generic                  # nested batches are refused anyway; keep them shallow
        c.depth += 1
        args = gen(c) if nr != X.HYPERVISOR_iret else []
        c.depth -= 1
        args = (list(args) + [c.word_val() for _ in range(6)])[:6]
        out += c.pack_words(nr, c.word_val(), *args)
    return out


def g_multicall(c: Ctx) -> list[int]:
    n = c.small(7)
    entries = _multicall_entries(c, n)
    if c.chance(0.85):
        return [c.buf(entries), n]
    size = c.t.abi.multicall_entry_size
    return [c.tail(entries, size * c.small(4)), c.pick((n + 1, n + 64, 0xFFFFFFFF, c.u32()))]


def g_update_va_mapping(c: Ctx) -> list[int]:
    va = c.page_va() if c.chance(0.8) else c.ptr()
    pte = c.pte()
    flags = c.small(8) if c.chance(0.7) else c.small(8) | c.ptr() & ~7
    if c.bits == 64:
        return [va, pte, flags]
    return [va, pte & 0xFFFFFFFF, pte >> 32, flags]


def g_set_timer_op(c: Ctx) -> list[int]:
    now = c.t.m.insns
    t = c.pick((0, 1, now, now + 1000, now + 10**9, (1 << 63) - 1, 1 << 63, (1 << 64) - 1)) \
        if c.chance(0.8) else c.rng.getrandbits(64)
    return [t] if c.bits == 64 else [t & 0xFFFFFFFF, t >> 32]


def _evtchn_struct(c: Ctx, cmd: int) -> bytes:
    if cmd == X.EVTCHNOP_bind_interdomain:
        return struct.pack("<HHII", c.domid(), 0, c.port(), c.u32())
    if cmd == X.EVTCHNOP_bind_virq:
        return struct.pack("<III", c.small(26) if c.chance(0.9) else c.u32(), c.small(2), c.u32())
    if cmd == X.EVTCHNOP_bind_pirq:
        return struct.pack("<III", c.u32(), c.small(2), c.u32())
    if cmd in (X.EVTCHNOP_close, X.EVTCHNOP_send, X.EVTCHNOP_unmask):
        return struct.pack("<I", c.port())
    if cmd == X.EVTCHNOP_status:
        return struct.pack("<HHI", c.domid(), 0, c.port()) + c.rng.randbytes(16)
    if cmd == X.EVTCHNOP_alloc_unbound:
        return struct.pack("<HHI", c.domid(), c.domid(), c.u32())
    if cmd == X.EVTCHNOP_bind_ipi:
        return struct.pack("<II", c.small(3), c.u32())
    if cmd == X.EVTCHNOP_bind_vcpu:
        return struct.pack("<II", c.port(), c.small(3) if c.chance(0.8) else c.u32())
    if cmd == X.EVTCHNOP_reset:
        return struct.pack("<H", c.domid())
    return c.rng.randbytes(c.small(32) + 4)


def g_event_channel_op(c: Ctx) -> list[int]:
    cmd = c.cmd(14)
    return [cmd, c.buf(_evtchn_struct(c, cmd))]


def g_event_channel_op_compat(c: Ctx) -> list[int]:
    cmd = c.cmd(14)
    return [c.buf(struct.pack("<I", cmd & 0xFFFFFFFF) + _evtchn_struct(c, cmd).ljust(24, b"\0"))]


def g_xen_version(c: Ctx) -> list[int]:
    cmd = c.cmd(11)
    if cmd == X.XENVER_get_features:
        return [cmd, c.buf(struct.pack("<II", c.small(3) if c.chance(0.8) else c.u32(), c.u32()))]
    return [cmd, c.out(c.pick((16, 64, 192, 1024, 8))) if c.chance(0.7) else c.ptr()]


def g_console_io(c: Ctx) -> list[int]:
    cmd = c.cmd(2)
    count = c.pick((0, 1, 2, 16, 80, 4095, 4096, 4097, 1 << 20, (1 << 20) + 1, 0xFFFFFFFF)) \
        if c.chance(0.5) else c.small(300)
    if cmd == 0:
        text = bytes(c.rng.choice(b"abcxyz \n\t\0\x1b\x7f\xff") for _ in range(min(count, 96)))
        return [cmd, count, c.buf(text)]
    return [cmd, count, c.out(min(count, 256))]


def _physdev_struct(c: Ctx, cmd: int) -> bytes:
    if cmd == 6:                                   # set_iopl
        return struct.pack("<I", c.small(5) if c.chance(0.9) else c.u32())
    if cmd == 7:                                   # set_iobitmap
        return c.pack_words(c.ptr()) + struct.pack("<I", c.pick((0, 1, 1024, 65536, 65537)))
    if cmd in (17, 28):                            # pirq_eoi_gmfn_v1/v2
        return c.pack_words(c.mfn())
    return struct.pack("<IIII", c.u32(), c.u32(), c.u32(), c.u32())


def g_physdev_op(c: Ctx) -> list[int]:
    cmd = c.cmd(32)
    return [cmd, c.buf(_physdev_struct(c, cmd))]


def g_physdev_op_compat(c: Ctx) -> list[int]:
    cmd = c.cmd(32)
    return [c.buf(struct.pack("<I", cmd & 0xFFFFFFFF) + _physdev_struct(c, cmd).ljust(16, b"\0"))]


def g_grant_table_op(c: Ctx) -> list[int]:
    cmd = c.cmd(13)
    count = c.small(4)
    if cmd == 2:                                   # setup_table
        frames = c.out(8 * 4)
        body = struct.pack("<HxxIh", c.domid(), c.small(8) if c.chance(0.8) else c.u32(), 0)
        body = body.ljust(16 if c.bits == 64 else 12, b"\0") + c.pack_words(frames)
    elif cmd == 6:                                 # query_size
        body = struct.pack("<IIHh", 0, 0, c.domid(), 0)
    elif cmd == 8:                                 # set_version
        body = struct.pack("<I", c.small(4))
    elif cmd == 0:                                 # map_grant_ref
        body = struct.pack("<QIIHhIQ", c.page_va(), c.small(32), c.small(64), c.domid(), 0, 0, 0)
    else:
        body = c.rng.randbytes(32)
    ops = body * max(1, count)
    if c.chance(0.85):
        return [cmd, c.buf(ops), count]
    return [cmd, c.tail(ops, len(body) * c.small(3)), c.u32()]


def g_vm_assist(c: Ctx) -> list[int]:
    return [c.cmd(2), c.small(34) if c.chance(0.9) else c.word_val()]


def g_vcpu_op(c: Ctx) -> list[int]:
    cmd = c.cmd(14)
    vcpu = c.pick((0, 0, 0, 1, 31, 32)) if c.chance(0.9) else c.u32()
    if cmd == 8:                                   # set_singleshot_timer
        t = g_set_timer_op(c)
        timeout = t[0] if c.bits == 64 else t[0] | t[1] << 32
        extra = c.buf(struct.pack("<QI", timeout, c.small(3)).ljust(16 if c.bits == 64 else 12,
                                                                    b"\0"))
    elif cmd == 6:                                 # set_periodic_timer
        extra = c.buf(struct.pack("<Q", c.pick((0, 1, 1000, 10**6, 10**9, 1 << 63))))
    elif cmd == 10:                                # register_vcpu_info
        extra = c.buf(struct.pack("<QII", c.mfn(), c.pick((0, 64, 4032, 4033, 4095, 4096)), 0))
    elif cmd in (5, 13):                           # register_*_memory_area
        extra = c.buf(struct.pack("<Q", c.ptr()))
    elif cmd == 0:                                 # initialise: a (random) vcpu_guest_context
        extra = c.buf(c.rng.randbytes(c.pick((64, 2800, 5168))))
    else:
        extra = c.out(48) if c.chance(0.8) else c.ptr()
    return [cmd, vcpu, extra]


def g_set_segment_base(c: Ctx) -> list[int]:
    which = c.small(5) if c.chance(0.9) else c.word_val()
    return [which, c.ptr() if c.chance(0.6) else c.word_val()]


def g_mmuext_op(c: Ctx) -> list[int]:
    ops = b""
    n = c.small(5)
    for _ in range(n):
        cmd = c.cmd(21)
        arg1 = c.mfn() if cmd in (0, 1, 2, 3, 4, 5, 15, 16, 17, 19, 20) and c.chance(0.8) \
            else c.page_va()
        arg2 = c.pick((0, 1, 16, 8192, 8193)) if cmd == 13 else \
            c.mfn() if cmd == 17 else c.ptr() if cmd in (8, 9) else c.word_val()
        cmd &= 0xFFFFFFFF
        ops += struct.pack("<I4xQQ", cmd, arg1 & U64, arg2 & U64) if c.bits == 64 else \
            struct.pack("<III", cmd, arg1 & 0xFFFFFFFF, arg2 & 0xFFFFFFFF)
    done = 0 if c.chance(0.3) else c.out(4)
    fd = X.DOMID_SELF if c.chance(0.8) else c.domid()
    if c.chance(0.85):
        return [c.buf(ops), n, done, fd]
    return [c.tail(ops, c.t.abi.mmuext_op_size * c.small(3)), c.u32(), done, fd]


def g_sched_op(c: Ctx) -> list[int]:
    cmd = _sched_cmd(c, 8)
    if cmd in (X.SCHEDOP_shutdown, X.SCHEDOP_shutdown_code):
        body = struct.pack("<I", c.small(8) if c.chance(0.9) else c.u32())
    elif cmd == X.SCHEDOP_poll:
        ports = c.buf(struct.pack(f"<{4}I", *[c.port() for _ in range(4)]))
        nr = c.small(5) if c.chance(0.8) else c.pick((128, 129, 0xFFFFFFFF))
        body = c.pack_words(ports) + struct.pack("<I", nr)
        body = body.ljust(16 if c.bits == 64 else 8, b"\0") + struct.pack("<Q", c.word_val())
    elif cmd == X.SCHEDOP_remote_shutdown:
        body = struct.pack("<HHI", c.domid(), 0, c.small(8))
    else:
        body = c.rng.randbytes(8)
    return [cmd, c.buf(body) if c.chance(0.9) else c.ptr()]


def g_callback_op(c: Ctx) -> list[int]:
    cmd = c.cmd(2)
    cb_type = c.small(9) if c.chance(0.9) else c.rng.getrandbits(16)
    flags = c.small(2) if c.chance(0.9) else c.rng.getrandbits(16)
    if c.bits == 64:
        body = struct.pack("<HH4xQ", cb_type, flags, c.code_addr())
    else:
        cs = c.t.abi.kernel_cs if c.chance(0.8) else c.rng.getrandbits(16)
        body = struct.pack("<HHII", cb_type, flags, cs, c.code_addr() & 0xFFFFFFFF)
    return [cmd, c.buf(body)]


GENERATORS: dict[int, Callable[[Ctx], list[int]]] = {
    X.HYPERVISOR_set_trap_table: g_set_trap_table,
    X.HYPERVISOR_mmu_update: g_mmu_update,
    X.HYPERVISOR_set_gdt: g_set_gdt,
    X.HYPERVISOR_stack_switch: g_stack_switch,
    X.HYPERVISOR_set_callbacks: g_set_callbacks,
    X.HYPERVISOR_fpu_taskswitch: lambda c: [c.small(2) if c.chance(0.8) else c.word_val()],
    X.HYPERVISOR_sched_op_compat: g_sched_op_compat,
    X.HYPERVISOR_set_debugreg: g_debugreg,
    X.HYPERVISOR_get_debugreg: g_debugreg,
    X.HYPERVISOR_update_descriptor: g_update_descriptor,
    X.HYPERVISOR_memory_op: g_memory_op,
    X.HYPERVISOR_multicall: g_multicall,
    X.HYPERVISOR_update_va_mapping: g_update_va_mapping,
    X.HYPERVISOR_set_timer_op: g_set_timer_op,
    X.HYPERVISOR_event_channel_op_compat: g_event_channel_op_compat,
    X.HYPERVISOR_xen_version: g_xen_version,
    X.HYPERVISOR_console_io: g_console_io,
    X.HYPERVISOR_physdev_op_compat: g_physdev_op_compat,
    X.HYPERVISOR_grant_table_op: g_grant_table_op,
    X.HYPERVISOR_vm_assist: g_vm_assist,
    X.HYPERVISOR_vcpu_op: g_vcpu_op,
    X.HYPERVISOR_set_segment_base: g_set_segment_base,
    X.HYPERVISOR_mmuext_op: g_mmuext_op,
    X.HYPERVISOR_sched_op: g_sched_op,
    X.HYPERVISOR_callback_op: g_callback_op,
    X.HYPERVISOR_event_channel_op: g_event_channel_op,
    X.HYPERVISOR_physdev_op: g_physdev_op,
}
STRUCTURED = tuple(sorted(GENERATORS))


def choose_nr(rng: random.Random, for_multicall: bool = False) -> int:
    """Mostly a hypercall with a structured generator; every number 0–63; sometimes far off."""
    r = rng.random()
    if r < 0.65:
        return STRUCTURED[rng.randrange(len(STRUCTURED))]
    if r < 0.97 or for_multicall:
        return rng.randrange(64)
    return rng.choice((64, 127, 128, 0xFFFFFFFF, 1 << 32, (1 << 63) + 17, (1 << 64) - 1))


def iret_frame(c: Ctx) -> tuple[bytes, int]:
    """A frame for the ``iret`` hypercall (at RSP) and the RSP to use: often a valid return to the
    sentinel, otherwise bent in one or more fields."""
    t = c.t
    abi = t.abi
    s = t.scratch
    rip = t.scratch.sentinel_va if c.chance(0.7) else c.code_addr()
    rflags = c.pick((0x202, 0x2, 0x246, 0x3202, 0x20202)) if c.chance(0.8) else c.word_val()
    rsp = s.stack_top if c.chance(0.7) else c.ptr()
    if c.bits == 64:
        cs = abi.kernel_cs if c.chance(0.75) else c.pick((abi.kernel_cs & ~3, abi.user_cs32,
                                                          0xE008, 0, c.rng.getrandbits(16)))
        ss = abi.kernel_ss if c.chance(0.85) else c.rng.getrandbits(16)
        flags = c.pick((0, 0, X.VGCF_in_syscall, c.word_val()))
        frame = c.pack_words(c.word_val(), c.word_val(), c.word_val(), flags, rip, cs, rflags,
                             rsp, ss)
    else:
        cs = abi.kernel_cs if c.chance(0.75) else c.pick((abi.kernel_cs & ~3, abi.user_cs, 0xE008,
                                                          c.rng.getrandbits(16)))
        frame = c.pack_words(c.word_val(), rip, cs, rflags, rsp, c.rng.getrandbits(16))
    if c.chance(0.1):
        frame = c.rng.randbytes(len(frame))
    sp = s.stack_top if c.chance(0.9) else c.ptr()
    return frame, sp

"""The fuzzed domain: a lab guest booted part-way, with a scratch area the fuzzer drives it from.

Every hypercall is made by the guest itself, through the real trap path: the fuzzer puts the
hypercall number and arguments in the guest's registers, points RIP at a trap instruction
(``syscall`` on pv64, ``int $0x82`` on pv32) in a scratch code page and lets the machine run. The
instruction after the trap is the *sentinel*: a one-address code hook there stops the run, which is
where a hypercall that returns normally ends up. A hypercall can also be made through the hypercall
page (RIP at the stub, the sentinel as return address on the stack), which exercises Xen's stubs
as guests use them.

Anything else the guest does after the trap — an upcall into a random callback, an ``iret`` to a
random frame, a bounced trap — runs under an instruction budget and ends in a stop, a crash or a
shutdown; all are legitimate outcomes the checks accept.

The scratch area lives in the start-of-day padding after the boot stack (mapped read-write by the
builder, unused by the lab guests): a guard page, the code page, two stack pages, the arena where
argument structures are written, and the last mapped page (whose successor is unmapped, for
page-crossing pointers). Addresses of every other kind — read-only, unmapped, Xen's, non-canonical
— come from the domain's layout (``m.layout``, ``m.abi``, ``m.xen_area``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from unicorn import UC_HOOK_CODE
from unicorn.x86_const import UC_X86_REG_RCX

from xendbg.machine.builder import BuildConfig
from xendbg.machine.machine import Machine
from xendbg.machine.memory import PAGE_SHIFT, PAGE_SIZE

from .insns import code_page, snippets_for

ARENA_PAGES = 8
SENTINEL_STOP = "fuzz"          # the run's stop reason when the guest reached the sentinel

# trap instruction, then the sentinel ("jmp ." — the hook stops the run before it executes)
CODE64 = b"\x0f\x05" + b"\xeb\xfe"
CODE32 = b"\xcd\x82" + b"\xeb\xfe"


@dataclass(frozen=True)
class Scratch:
    code_va: int
    sentinel_va: int
    stack_top: int
    arena_va: int
    arena_size: int
    last_page_va: int            # mapped read-write; the page after it is not mapped


class FuzzTarget:
    """A booted domain of ``image`` and what the fuzzer needs to know about its address space."""

    def __init__(self, image, boot_insns: int, memory_mib: int = 16) -> None:
        self.image = image
        self.m = m = Machine(image, BuildConfig(memory_mib=memory_mib))
        self.boot_reason = m.run(max_insns=boot_insns) if boot_insns else "not started"
        self.abi = m.abi
        self.bits = m.abi.bits
        self.word = m.abi.word
        self.word_mask = (1 << self.bits) - 1
        lay = m.layout
        stack = next(r for r in lay.regions if r.name == "boot stack")
        pad = stack.va + (stack.pages << PAGE_SHIFT)
        if (lay.mapped_end_va - pad) >> PAGE_SHIFT < 6 + ARENA_PAGES:
            raise RuntimeError("the start-of-day padding is too small for the fuzzer's scratch area")
        code = pad + PAGE_SIZE
        self.scratch = Scratch(code_va=code, sentinel_va=code + 2,
                               stack_top=code + 3 * PAGE_SIZE - 0x100,
                               arena_va=code + 3 * PAGE_SIZE, arena_size=ARENA_PAGES * PAGE_SIZE,
                               last_page_va=lay.mapped_end_va - PAGE_SIZE)
        self._code, self.snippet_addrs = code_page(self.bits, code, code + 2,
                                                   CODE64 if self.bits == 64 else CODE32)
        self.snippet_names = [name for name, _insn in snippets_for(self.bits)]
        self._code_ma = self.m.guest.translate(code)
        self.install_code()
        self._hook = m.cpu.uc.hook_add(UC_HOOK_CODE, self._on_sentinel, None,
                                       self.scratch.sentinel_va, self.scratch.sentinel_va)
        self._layout_pools()

    # -- the code page ------------------------------------------------------------------------
    def install_code(self) -> None:
        """(Re)write the code page; host writes leave stale translations, hence the flush."""
        page = self._code
        ma = self.m.guest.translate(self.scratch.code_va)
        if ma is None:
            raise RuntimeError("the fuzzer's code page is no longer mapped")
        ma &= ~(PAGE_SIZE - 1)
        self._code_ma = ma
        self.m.memory.write(ma, page)
        self.m.cpu.flush_tb()

    def code_intact(self, mapping: bool = True) -> bool:
        """The code page still holds the fuzzer's code (and, with ``mapping``, is still the page
        the guest's tables map at its address — a page walk, so only after MMU-changing calls)."""
        if mapping:
            ma = self.m.guest.translate(self.scratch.code_va)
            if ma is None or ma & ~(PAGE_SIZE - 1) != self._code_ma:
                return False
        return self.m.memory.view[self._code_ma:self._code_ma + PAGE_SIZE] == self._code

    def _on_sentinel(self, _uc, _address, _size, _user) -> None:
        self.m.request_stop(SENTINEL_STOP)

    # -- making a call ------------------------------------------------------------------------------
    def call(self, nr: int, args: list[int], *, rip: int | None = None, rsp: int | None = None,
             rcx: int | None = None, budget: int = 400) -> str:
        """Put ``nr``/``args`` in the hypercall registers and run from ``rip`` (the trap)."""
        mask = self.word_mask
        regs = [nr & mask] + [a & mask for a in (list(args) + [0] * 6)[:6]]
        regs.append((self.scratch.code_va if rip is None else rip) & mask)
        regs.append((self.scratch.stack_top if rsp is None else rsp) & mask)
        self.m.cpu.hcall.write(regs)
        if rcx is not None and self.bits == 64:
            self.m.cpu.uc.reg_write(UC_X86_REG_RCX, rcx & mask)
        return self.m.run(max_insns=budget)

    def ready(self, mapping: bool = True) -> str | None:
        """Why this domain cannot take another call (None: it can)."""
        m = self.m
        if m.domain.dying:
            return "crashed" if m.domain.crashed else "shut down"
        if self.bits == 64 and not m.vcpu.kernel_mode:
            return "left guest kernel mode"
        if m.cpu.cpl() != (3 if self.bits == 64 else 1):
            return f"CPL is {m.cpu.cpl()}"
        if not self.code_intact(mapping):
            return "code page changed"
        return None

    # -- address and frame pools ----------------------------------------------------------------------
    def _layout_pools(self) -> None:
        m, abi, lay, area, s = self.m, self.abi, self.m.layout, self.m.xen_area, self.scratch
        regions = {r.name: r for r in lay.regions}

        def span(name: str) -> tuple[int, int] | None:
            r = regions.get(name)
            return None if r is None else (r.va, r.va + (r.pages << PAGE_SHIFT))

        self.rw_ranges = [rng for rng in (
            (s.arena_va, s.arena_va + s.arena_size), span("kernel"), span("start_info"),
            span("xenstore"), span("console"), span("p2m"), (s.last_page_va, lay.mapped_end_va),
        ) if rng is not None]
        pt = (lay.pt_base_va, lay.pt_base_va + (lay.nr_pt_frames << PAGE_SHIFT))
        self.ro_ranges = [pt]
        end = lay.mapped_end_va
        low_unmapped = [0, 8, 0x1000, 0x10000]
        if self.bits == 64:
            self.unmapped = low_unmapped + [end, end + 0x1000, end + 0x200000, 0x7FFFFFFFF000,
                                            self.image.virt_base - 0x1000]
            self.xen_addrs = [abi.m2p_start, abi.m2p_start + 8 * 17, area.private_va,
                              area.gdt_va + (14 << PAGE_SHIFT), area.trampoline_va, area.stack_va,
                              abi.hypervisor_end - 8, 0xFFFF830000000000 + 0x7000]
            self.noncanonical = [1 << 47, 0x8000000000000000, 0xFFFF7FFFFFFFF000,
                                 0x0000800000000008]
            self.crossing = [(lay.mapped_end_va, "unmapped"), (pt[0], "read-only"),
                             (1 << 47, "non-canonical"), (abi.m2p_start, "Xen")]
        else:
            self.unmapped = low_unmapped + [end, end + 0x1000, 0x400000, 0x80000000,
                                            self.image.virt_base - 0x1000]
            self.xen_addrs = [abi.m2p_start, abi.m2p_start + 4 * 17, area.private_va,
                              area.trampoline_va, area.stack_va, 0xFFFFF000, 0xFFFFFFFC]
            self.noncanonical = []
            self.crossing = [(lay.mapped_end_va, "unmapped"), (pt[0], "read-only"),
                             (abi.hypervisor_start, "Xen")]

        own = [int(x) for x in m.domain.p2m]
        self.own_mfns = own
        self.pt_mfns = [mfn for _level, mfn in lay.pt_frames]
        scratch_mfns = []
        for va in range(s.arena_va, s.arena_va + s.arena_size, PAGE_SIZE):
            ma = m.guest.translate(va)
            if ma is not None:
                scratch_mfns.append(ma >> PAGE_SHIFT)
        self.scratch_mfns = scratch_mfns
        d = m.domain
        self.special_mfns = [d.store_mfn, d.console_mfn, d.shared_info_mfn]
        self.xen_mfns = [0, 1, area.gdt_reserved_mfn, area.zero_mfn, area.gdt_l1_mfn,
                         *area.m2p_mfns[:2]]
        others = np.nonzero(m.memory.owner == 0)[0]
        self.other_mfns = [int(x) for x in others[:4]]
        nr = m.memory.nr_frames
        self.bad_mfns = [nr, nr + 1, (1 << 32) - 1, 1 << 40, (1 << 52) - 1, self.word_mask]
        self.hypercall_page = d.hypercall_page_va
        self.kernel_span = (self.image.virt_kstart, self.image.virt_kend)

    def arena_slot_ok(self, va: int, size: int) -> bool:
        s = self.scratch
        return s.arena_va <= va and va + size <= s.arena_va + s.arena_size

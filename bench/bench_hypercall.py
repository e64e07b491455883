"""The null hypercall: ``xen_version(XENVER_version)`` in a guest loop, against bare Unicorn's floor.

xendbg: a hello lab domain, past Xen's entry trampoline, runs a loop in a scratch page —
``mov $17,%eax; xor %edi,%edi; xor %esi,%esi; syscall; dec %ebx; jnz loop`` (pv64; pv32 the same
with ``int $0x82`` and the arguments in EBX/ECX) — then powers off with SCHEDOP_shutdown. Every
iteration is a whole round trip: the trap, the hook, register reads, the table lookup, the handler,
rAX, the check for events, back to the guest.

Floor: the very same loop bytes in a bare Unicorn engine (flat memory, no paging, no block counter)
whose syscall hook (pv64) or interrupt hook (pv32) is an empty Python function — the cheapest a
Python-hooked hypervisor can ever be (UNICORN.md §4). The ratio is xendbg / floor.

A third row prices the events: the pv64 loop with one listener that takes every event (as a
debugger session does: a ``hypercall_entry`` and a ``hypercall`` event per call), against the same
loop with nobody listening.
"""

from __future__ import annotations

import os
import statistics
import struct
import time

from unicorn import UC_ARCH_X86, UC_HOOK_INSN, UC_HOOK_INTR, UC_MODE_32, UC_MODE_64, Uc
from unicorn import x86_const as U

QUICK = os.environ.get("XENDBG_BENCH_QUICK") == "1"
N = 20_000 if QUICK else 200_000
REPEAT = 3 if QUICK else 5

LOOP64 = (b"\xb8\x11\x00\x00\x00"        # mov $17, %eax          (xen_version)
          b"\x31\xff"                    # xor %edi, %edi         (XENVER_version)
          b"\x31\xf6"                    # xor %esi, %esi         (arg: NULL)
          b"\x0f\x05"                    # syscall
          b"\xff\xcb"                    # dec %ebx
          b"\x75\xf1")                   # jnz loop
LOOP32 = (b"\xb8\x11\x00\x00\x00"        # mov $17, %eax
          b"\x31\xdb"                    # xor %ebx, %ebx
          b"\x31\xc9"                    # xor %ecx, %ecx
          b"\xcd\x82"                    # int $0x82
          b"\x4f"                        # dec %edi
          b"\x75\xf2")                   # jnz loop


def _poweroff64(code_va: int) -> bytes:
    here = code_va + len(LOOP64) + 10
    rel = (code_va + 0x40) - (here + 7)
    return (b"\xb8\x1d\x00\x00\x00\xbf\x02\x00\x00\x00"           # sched_op, SCHEDOP_shutdown
            + b"\x48\x8d\x35" + struct.pack("<i", rel)            # lea reason(%rip), %rsi
            + b"\x0f\x05\xeb\xfe")


def _poweroff32(code_va: int) -> bytes:
    return (b"\xb8\x1d\x00\x00\x00\xbb\x02\x00\x00\x00"
            + b"\xb9" + struct.pack("<I", code_va + 0x40)          # mov $reason, %ecx
            + b"\xcd\x82\xeb\xfe")


def xendbg_rate(guest: str, n: int, listen: bool = False) -> float:
    from xendbg.guests import lab_image
    from xendbg.machine.builder import BuildConfig
    from xendbg.machine.loader import load_kernel
    from xendbg.machine.machine import Machine

    m = Machine(load_kernel(lab_image(guest)), BuildConfig(memory_mib=16))
    m.run(max_insns=50)                          # past the entry trampoline, in the guest
    stack = next(r for r in m.layout.regions if r.name == "boot stack")
    code = stack.va + (stack.pages << 12) + 0x1000
    if m.is64:
        body = LOOP64 + _poweroff64(code)
        counter = U.UC_X86_REG_RBX
    else:
        body = LOOP32 + _poweroff32(code)
        counter = U.UC_X86_REG_EDI
    page = body.ljust(0x40, b"\xcc") + bytes(4)  # reason: SHUTDOWN_poweroff
    assert m.guest.write(code, page)
    m.cpu.flush_tb()
    m.cpu.uc.reg_write(counter, n)
    m.cpu.ip = code
    if listen:
        m.listeners.append(lambda _event: None)  # no event_kinds: every event is built for it
    start = time.perf_counter()
    reason = m.run()
    took = time.perf_counter() - start
    calls = m.stats.calls.get("xen_version", 0)
    if reason != "shutdown" or calls != n:
        raise RuntimeError(f"the loop did not finish: {reason}, {calls} calls, "
                           f"{m.domain.crashed}")
    return n / took


def floor_rate(bits: int, n: int) -> float:
    base = 0x1000
    uc = Uc(UC_ARCH_X86, UC_MODE_64 if bits == 64 else UC_MODE_32)
    uc.mem_map(base, 0x4000)
    loop = LOOP64 if bits == 64 else LOOP32
    uc.mem_write(base, loop)
    uc.reg_write(U.UC_X86_REG_RSP if bits == 64 else U.UC_X86_REG_ESP, base + 0x3000)

    def nothing(*_args) -> None:
        pass

    if bits == 64:
        uc.hook_add(UC_HOOK_INSN, nothing, None, 1, 0, U.UC_X86_INS_SYSCALL)
        uc.reg_write(U.UC_X86_REG_RBX, n)
    else:
        uc.hook_add(UC_HOOK_INTR, nothing)
        uc.reg_write(U.UC_X86_REG_EDI, n)
    start = time.perf_counter()
    uc.emu_start(base, base + len(loop))
    took = time.perf_counter() - start
    return n / took


def run() -> list[dict]:
    rows = []
    for guest, bits, trap in (("hello-pv64", 64, "syscall"), ("hello-pv32", 32, "int $0x82")):
        ours, floor = [], []
        for _ in range(REPEAT):                  # interleaved, so drift hits both alike
            ours.append(xendbg_rate(guest, N))
            floor.append(floor_rate(bits, N))
        rows.append({
            "what": f"null hypercall round trip, {guest[-4:]} ({trap}, xen_version(XENVER_version) "
                    "in a guest loop)",
            "xendbg": statistics.median(ours), "baseline": statistics.median(floor),
            "baseline_name": "bare Unicorn, the same loop, empty Python hook",
            "unit": "calls/s", "higher_is_better": True,
            "note": f"median of {REPEAT} × {N:,} calls"})
    listened, quiet = [], []
    for _ in range(REPEAT):
        listened.append(xendbg_rate("hello-pv64", N, listen=True))
        quiet.append(xendbg_rate("hello-pv64", N))
    rows.append({
        "what": "null hypercall round trip, pv64, with a listener taking every event (two events "
                "per call, what a debugger session costs the hypercall path)",
        "xendbg": statistics.median(listened), "baseline": statistics.median(quiet),
        "baseline_name": "the same loop, nobody listening",
        "unit": "calls/s", "higher_is_better": True,
        "note": f"median of {REPEAT} × {N:,} calls"})
    return rows


if __name__ == "__main__":
    for row in run():
        print(row)

"""Instruction accounting and clean stopping, one basic block at a time.

Unicorn calls the block hook at the start of every translated block. The hook adds the block's
instruction count to a running total and stops the emulator (``uc_emu_stop``) when the total has
reached the budget or when another thread asked for a stop. Stopping at a block boundary is the only
asynchronous stop that is safe: ``emu_start(timeout=…)`` and ``emu_stop`` from another thread can
re-execute a read-modify-write instruction (UNICORN.md §7).

**The stop rule.** The test comes *before* the block is counted: a block that starts with
``insns >= budget`` (or with a stop requested) is not executed — Unicorn does not run a block whose
hook called ``uc_emu_stop`` — so it is not counted either, and the next run starts with it and counts
it then. A budget that falls inside a block is therefore overshot to the end of that block: the stop
is at the first block boundary at or after the budget, and every block counted was executed.
This is what makes slicing invisible: running to the end in one call or in slices of any size
(``Machine.run(max_insns)``, pauses) stops only at boundaries the uninterrupted run also crosses,
and gives the same count, the same virtual time and the same events. (A block that an exception
cuts short still counts whole, in either case: the total is an exact count of the instructions of
the blocks entered, the same in every run.)

The instruction count of a block is computed once per (address, size) by ``icount_of`` — the
machine decodes the block with capstone — and cached; Unicorn's ``size`` is the block's length in
bytes, not its instruction count (x86 instructions are 1 to 15 bytes long). The total is therefore
exact for code that does not change under the same address and size, and always deterministic: two
runs of the same guest count the same.

This is the pure-Python twin: it registers a Python ``UC_HOOK_BLOCK`` callback (about 8 M guest
instructions/s). ``_blockhook_c`` is the compiled version (billions of instructions/s on loops of
32-instruction blocks) with the same interface and the same counts.
"""

from __future__ import annotations

from collections.abc import Callable

from unicorn import UC_HOOK_BLOCK, Uc

STOP_NONE = 0
STOP_BUDGET = 1
STOP_REQUEST = 2


class BlockCounter:
    """Counts executed instructions per block; stops at a budget or on request."""

    def __init__(self, uc: Uc, icount_of: Callable[[int, int], int]) -> None:
        self._uc = uc
        self._icount_of = icount_of
        self._hook_error: BaseException | None = None   # what icount_of raised (the block counts 1)
        self._cache: dict[tuple[int, int], int] = {}
        self.insns = 0
        self.blocks = 0
        self.budget = 0          # absolute value of ``insns`` at which to stop; 0 = no budget
        self.stop_reason = STOP_NONE
        self._stop_request = False
        self._handle: int | None = None

    def install(self) -> None:
        if self._handle is None:
            self._handle = self._uc.hook_add(UC_HOOK_BLOCK, self._hook)

    def remove(self) -> None:
        if self._handle is not None:
            self._uc.hook_del(self._handle)
            self._handle = None

    def request_stop(self) -> None:
        """Ask the emulator to stop at the next block boundary (thread-safe). A request made
        while it is not running stops the next run at its first block."""
        self._stop_request = True

    def clear_stop(self) -> None:
        """Withdraw a pending request and forget the last stop's reason."""
        self._stop_request = False
        self.stop_reason = STOP_NONE

    def flush_cache(self) -> None:
        self._cache.clear()

    def cached_blocks(self) -> int:
        return len(self._cache)

    def _hook(self, uc: Uc, address: int, size: int, _user_data: object) -> None:
        if self._stop_request or (self.budget and self.insns >= self.budget):
            # Stopped here, this block does not run now: it is not counted (the module docstring).
            if self._stop_request:
                self._stop_request = False    # a request is consumed by the stop it causes
                self.stop_reason = STOP_REQUEST
            else:
                self.stop_reason = STOP_BUDGET
            uc.emu_stop()
            return
        key = (address, size)
        count = self._cache.get(key)
        if count is None:
            try:
                count = self._icount_of(address, size)
            except BaseException as exc:      # noqa: BLE001 - never unwind into Unicorn
                self._hook_error = exc
                count = 1
            count = count if 1 <= count <= 0xFFFFFFFF else 1     # as the compiled twin stores it
            self._cache[key] = count
        self.insns += count
        self.blocks += 1

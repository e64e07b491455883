"""Checked access to guest virtual memory: the one door through which Xen touches guest pointers.

Every pointer a guest passes (a hypercall argument, a structure inside one) is read or written here,
never directly. An address in Xen's hole, a non-present page, a read-only page on a write or a
translation that leaves machine memory all give ``None``/``False``, which the handlers turn into
``-EFAULT`` — the guest is untrusted input, and nothing it passes may raise a Python exception.

Accesses are made with Xen's privileges in the guest's current address space (the page tables in
cr3): the user bit does not matter, the writable bit does (Xen runs with CR0.WP set).
"""

from __future__ import annotations

import struct
from collections.abc import Callable

from xendbg.fast.walk import WALK_OK, walk
from xendbg.machine.abi.layout import Abi
from xendbg.machine.memory import PAGE_SIZE, MachineMemory


class GuestMemory:
    def __init__(self, memory: MachineMemory, abi: Abi, current_cr3: Callable[[], int]) -> None:
        self.memory = memory
        self.abi = abi
        self.current_cr3 = current_cr3
        self.levels = abi.page_levels
        self._mask = (1 << abi.bits) - 1
        self._word = abi.word
        self._word_fmt = "<Q" if abi.word == 8 else "<I"

    def accessible(self, va: int, length: int) -> bool:
        """Xen's ``access_ok``: the range is canonical/in range and outside the hypervisor hole."""
        if length < 0 or va < 0:
            return False
        end = va + length
        if self.abi.bits == 32:
            return end <= self.abi.hypervisor_start
        if end > (1 << 64):
            return False
        lo_ok = end <= (1 << 47)
        hi_ok = va >= self.abi.hypervisor_end and va >= 0xFFFF800000000000
        return lo_ok or hi_ok or length == 0

    def translate(self, va: int, write: bool = False, cr3: int | None = None) -> int | None:
        """Machine address of ``va`` (one byte), or None if Xen's access would fault."""
        top = self.current_cr3() if cr3 is None else cr3
        status, ma, perms, _ = walk(self.memory.bytes, top, va & self._mask, self.levels)
        if status != WALK_OK or (write and not perms & 1):
            return None
        return ma

    def read(self, va: int, length: int, cr3: int | None = None) -> bytes | None:
        if not self.accessible(va, length):
            return None
        out = bytearray()
        while length > 0:
            ma = self.translate(va, False, cr3)
            if ma is None:
                return None
            n = min(length, PAGE_SIZE - (va & (PAGE_SIZE - 1)))
            out += self.memory.view[ma:ma + n]
            va += n
            length -= n
        return bytes(out)

    def write(self, va: int, data: bytes, cr3: int | None = None) -> bool:
        """Write all of ``data`` or nothing: every page is checked before the first byte moves."""
        if not self.accessible(va, len(data)):
            return False
        pieces = []
        pos = 0
        while pos < len(data):
            ma = self.translate(va + pos, True, cr3)
            if ma is None:
                return False
            n = min(len(data) - pos, PAGE_SIZE - ((va + pos) & (PAGE_SIZE - 1)))
            pieces.append((ma, pos, n))
            pos += n
        for ma, start, n in pieces:
            self.memory.view[ma:ma + n] = data[start:start + n]
        return True

    def read_word(self, va: int) -> int | None:
        raw = self.read(va, self._word)
        return None if raw is None else struct.unpack(self._word_fmt, raw)[0]

    def write_word(self, va: int, value: int) -> bool:
        return self.write(va, struct.pack(self._word_fmt, value & self._mask))

    def read_u32(self, va: int) -> int | None:
        raw = self.read(va, 4)
        return None if raw is None else struct.unpack("<I", raw)[0]

    def write_u32(self, va: int, value: int) -> bool:
        return self.write(va, struct.pack("<I", value & 0xFFFFFFFF))

    def read_u64(self, va: int) -> int | None:
        raw = self.read(va, 8)
        return None if raw is None else struct.unpack("<Q", raw)[0]

    def write_u64(self, va: int, value: int) -> bool:
        return self.write(va, struct.pack("<Q", value & 0xFFFFFFFFFFFFFFFF))

    def read_cstring(self, va: int, limit: int) -> bytes | None:
        """Bytes up to the first NUL (not included), at most ``limit``; None on a fault."""
        out = bytearray()
        while len(out) < limit:
            chunk = min(limit - len(out), PAGE_SIZE - (va & (PAGE_SIZE - 1)))
            raw = self.read(va, chunk)
            if raw is None:
                return None
            nul = raw.find(b"\0")
            if nul >= 0:
                return bytes(out + raw[:nul])
            out += raw
            va += chunk
        return bytes(out)

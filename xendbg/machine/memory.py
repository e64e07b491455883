"""Machine memory: one host buffer of machine frames, their owners, and checked access.

Frame spaces have distinct names throughout xendbg (DESIGN.md, convention 4):

* ``mfn`` — a machine frame number, an index into this buffer;
* ``ma``  — a machine address, ``mfn << 12 | offset``;
* ``pfn`` — a guest's pseudo-physical frame number (translated by the domain's p2m);
* ``va``  — a guest virtual address.

The buffer is an anonymous ``mmap`` so that Unicorn maps it without copying (``mem_map_ptr``), the
hypervisor reads it through numpy views, and a snapshot is one array copy. Every frame has an owner
domain id; frames of Xen itself and of notional other domains are interleaved with the guest's, so that
a guest which confuses pfns with mfns fails the way it would on real Xen.
"""

from __future__ import annotations

import ctypes
import mmap
import struct

import numpy as np

from xendbg.machine.abi.xen import DOMID_INVALID

PAGE_SHIFT = 12
PAGE_SIZE = 1 << PAGE_SHIFT
PAGE_MASK = PAGE_SIZE - 1

_U64 = struct.Struct("<Q")
_U32 = struct.Struct("<I")


class MachineMemory:
    """``nr_frames`` machine frames, zero-filled, all unowned at first."""

    def __init__(self, nr_frames: int) -> None:
        if nr_frames <= 0:
            raise ValueError("machine memory needs at least one frame")
        self.nr_frames = nr_frames
        self.size = nr_frames << PAGE_SHIFT
        self._mmap = mmap.mmap(-1, self.size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        self.bytes = np.frombuffer(self._mmap, dtype=np.uint8)
        self.view = memoryview(self._mmap)
        self.owner = np.full(nr_frames, DOMID_INVALID, dtype=np.uint16)
        # A ctypes object over the same pages gives Unicorn a stable host pointer.
        self._cbuf = (ctypes.c_char * self.size).from_buffer(self._mmap)

    # -- the host side ------------------------------------------------------------------------
    @property
    def host_address(self) -> int:
        """Address of machine address 0 in this process (for ``Uc.mem_map_ptr``)."""
        return ctypes.addressof(self._cbuf)

    def contains(self, ma: int, length: int = 1) -> bool:
        return 0 <= ma and length >= 0 and ma + length <= self.size

    def read(self, ma: int, length: int) -> bytes:
        return bytes(self.view[ma:ma + length])

    def write(self, ma: int, data: bytes | bytearray | memoryview) -> None:
        self.view[ma:ma + len(data)] = data

    def read_u64(self, ma: int) -> int:
        return _U64.unpack_from(self.view, ma)[0]

    def write_u64(self, ma: int, value: int) -> None:
        _U64.pack_into(self.view, ma, value & 0xFFFFFFFFFFFFFFFF)

    def read_u32(self, ma: int) -> int:
        return _U32.unpack_from(self.view, ma)[0]

    def write_u32(self, ma: int, value: int) -> None:
        _U32.pack_into(self.view, ma, value & 0xFFFFFFFF)

    def frame(self, mfn: int) -> memoryview:
        """The 4 KiB of frame ``mfn`` (a live view: writes go to machine memory)."""
        return self.view[mfn << PAGE_SHIFT:(mfn + 1) << PAGE_SHIFT]

    def frame_u64(self, mfn: int) -> np.ndarray:
        """Frame ``mfn`` as 512 little-endian u64 entries (a page table, for instance)."""
        return self.bytes[mfn << PAGE_SHIFT:(mfn + 1) << PAGE_SHIFT].view("<u8")

    def clear_frame(self, mfn: int) -> None:
        self.bytes[mfn << PAGE_SHIFT:(mfn + 1) << PAGE_SHIFT] = 0

    def is_valid_mfn(self, mfn: int) -> bool:
        return 0 <= mfn < self.nr_frames


class FrameAllocator:
    """Hands out machine frames in a fixed, reproducible order.

    ``free`` is a list of mfns; allocation pops from the front, so the same configuration always
    produces the same machine layout (determinism is a design rule, DESIGN.md "Time is virtual").
    """

    def __init__(self, memory: MachineMemory, free: list[int]) -> None:
        self.memory = memory
        self.free = list(free)
        self._next = 0

    def remaining(self) -> int:
        return len(self.free) - self._next

    def alloc(self, owner: int) -> int:
        if self._next >= len(self.free):
            raise MemoryError("out of machine frames")
        mfn = self.free[self._next]
        self._next += 1
        self.memory.owner[mfn] = owner
        self.memory.clear_frame(mfn)
        return mfn

    def alloc_many(self, count: int, owner: int) -> list[int]:
        return [self.alloc(owner) for _ in range(count)]

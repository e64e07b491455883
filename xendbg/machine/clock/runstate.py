"""A vCPU's runstate: how long it has been running, runnable, blocked and offline (``vcpu.h``).

Xen accounts every state change (``vcpu_runstate_change``): the time since the last change is added
to the old state's total, and the entry time moves on. ``VCPUOP_get_runstate_info`` returns a copy
in which the current state has also been charged up to now (``vcpu_runstate_get``). A guest may
register an area in its memory (``VCPUOP_register_runstate_memory_area``) that Xen rewrites at every
context switch of the vCPU (``update_runstate_area``): when it is descheduled and when it runs again.

With ``VMASST_TYPE_runstate_update_flag`` the guest can tell a torn copy: Xen first sets
``XEN_RUNSTATE_UPDATE`` (bit 63 of ``state_entry_time``) by writing that field's top byte alone,
then copies the whole structure with the bit set, then clears the bit with another one-byte store.

Layouts: ``{int state; uint64_t state_entry_time; uint64_t time[4]}`` is 48 bytes on x86_64 (with 4
bytes of padding after ``state``) and 44 bytes in the 32-bit ABI (packed: the u64s at 4 and 12).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

RUNSTATE_running = 0
RUNSTATE_runnable = 1
RUNSTATE_blocked = 2
RUNSTATE_offline = 3
RUNSTATE_NAMES = ("running", "runnable", "blocked", "offline")
XEN_RUNSTATE_UPDATE = 1 << 63

RUNSTATE_64 = struct.Struct("<i4xQ4Q")        # 48 bytes
RUNSTATE_32 = struct.Struct("<iQ4Q")          # 44 bytes (struct.Struct "<" packs without padding)
assert RUNSTATE_64.size == 48 and RUNSTATE_32.size == 44


def runstate_layout(bits: int) -> tuple[struct.Struct, int]:
    """The structure for an ABI and the offset of ``state_entry_time`` in it."""
    return (RUNSTATE_64, 8) if bits == 64 else (RUNSTATE_32, 4)


@dataclass
class Runstate:
    state: int = RUNSTATE_offline
    state_entry_time: int = 0
    time: list[int] = field(default_factory=lambda: [0, 0, 0, 0])

    def change(self, new_state: int, now: int) -> None:
        """``vcpu_runstate_change``: charge the old state, enter the new one at ``now``."""
        delta = now - self.state_entry_time
        if delta > 0:
            self.time[self.state] += delta
            self.state_entry_time = now
        self.state = new_state

    def get(self, now: int) -> Runstate:
        """``vcpu_runstate_get``: a copy with the current state charged up to ``now``."""
        copy = Runstate(self.state, self.state_entry_time, list(self.time))
        delta = now - self.state_entry_time
        if delta > 0:
            copy.time[self.state] += delta
        return copy

    def pack(self, bits: int, entry_time_flags: int = 0) -> bytes:
        layout, _ = runstate_layout(bits)
        mask = (1 << 64) - 1
        return layout.pack(self.state, (self.state_entry_time | entry_time_flags) & mask,
                           *(t & mask for t in self.time))


def update_runstate_area(guest, va: int, runstate: Runstate, bits: int, update_flag: bool,
                         cr3: int) -> bool:
    """Copy ``runstate`` to the guest's area at ``va`` (through page tables ``cr3``), with the
    ``XEN_RUNSTATE_UPDATE`` protocol when the guest enabled it; False if the copy faulted."""
    _, entry_off = runstate_layout(bits)
    top_byte = va + entry_off + 7
    if update_flag:
        flagged = runstate.pack(bits, XEN_RUNSTATE_UPDATE)
        guest.write(top_byte, flagged[entry_off + 7:entry_off + 8], cr3)
        ok = guest.write(va, flagged, cr3)
        guest.write(top_byte, runstate.pack(bits)[entry_off + 7:entry_off + 8], cr3)
        return ok
    return guest.write(va, runstate.pack(bits), cr3)

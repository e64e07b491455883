"""What Xen writes for the guest's clock: ``vcpu_time_info`` and the wallclock in ``shared_info``.

``vcpu_time_info`` (32 bytes, in every ``vcpu_info`` at offset 0x20, the same on both ABIs) is a
*record*: a TSC timestamp, the system time (ns since the machine started) at that TSC, and the scale
(``tsc_to_system_mul``, ``tsc_shift``) to extrapolate from it. A guest computes the time now as
``system_time + scale_delta(rdtsc() - tsc_timestamp)`` and never asks Xen.

Both structures are written under a seqlock, Xen's ``version_update_begin``/``_end``: the version is
made odd (``(v + 1) | 1``) before any other field changes and even (``v + 1``) after all of them,
with write barriers in between; a reader that saw an odd version, or a different version before
and after reading, reads again. Xen writes a ``vcpu_time_info`` only when the record changed
(``__update_vcpu_system_time`` compares first) unless forced.

The wallclock (``wc_sec``, ``wc_nsec``, ``wc_sec_hi``) is the wall time at system time 0; the guest
adds its system time. It has its own version (``wc_version``).

A vCPU may also register a second copy of its record in its own memory
(``VCPUOP_register_vcpu_time_memory_area``, 64-bit guests only); Xen copies every update there with
the same protocol (``update_secondary_system_time``).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from xendbg.machine.abi.layout import (
    TIME_SYSTEM_TIME,
    TIME_TSC_SHIFT,
    TIME_TSC_TIMESTAMP,
    TIME_VERSION,
)

TIME_INFO = struct.Struct("<IIQQIbBH")       # version, pad0, tsc_timestamp, system_time, mul,
TIME_INFO_SIZE = TIME_INFO.size              # shift, flags, pad1  (32 bytes)
assert TIME_INFO_SIZE == 32 and TIME_TSC_SHIFT == 0x1C and TIME_SYSTEM_TIME == 0x10
assert TIME_TSC_TIMESTAMP == 0x08 and TIME_VERSION == 0


def version_update_begin(version: int) -> int:
    """Xen's ``version_update_begin``: odd, and different from any version a reader saw."""
    return ((version + 1) | 1) & 0xFFFFFFFF


def version_update_end(version: int) -> int:
    return (version + 1) & 0xFFFFFFFF


@dataclass(frozen=True)
class TimeRecord:
    """The fields of a ``vcpu_time_info`` but its version (what ``collect_time_info`` builds)."""

    tsc_timestamp: int
    system_time: int
    tsc_to_system_mul: int
    tsc_shift: int
    flags: int

    def pack(self, version: int) -> bytes:
        return TIME_INFO.pack(version, 0, self.tsc_timestamp & (2**64 - 1),
                              self.system_time & (2**64 - 1), self.tsc_to_system_mul,
                              self.tsc_shift, self.flags, 0)


def read_time_info(view, ma: int) -> tuple[int, TimeRecord]:
    """The ``vcpu_time_info`` at machine address ``ma``: (version, record)."""
    version, _pad, tsc, stime, mul, shift, flags, _pad1 = TIME_INFO.unpack_from(view, ma)
    return version, TimeRecord(tsc, stime, mul, shift, flags)


def write_time_info(view, ma: int, record: TimeRecord, force: bool) -> int | None:
    """``__update_vcpu_system_time`` on the record at ``ma``: the odd version it wrote under, or
    None when nothing changed (and the update was not forced), so nothing was written."""
    version, current = read_time_info(view, ma)
    if not force and current == record:
        return None
    # 1. odd version, 2. the fields, 3. even version: every step a separate store, in this order.
    version = version_update_begin(version)
    struct.pack_into("<I", view, ma + TIME_VERSION, version)
    view[ma + 4:ma + TIME_INFO_SIZE] = record.pack(version)[4:]
    struct.pack_into("<I", view, ma + TIME_VERSION, version_update_end(version))
    return version


def write_secondary(guest, va: int, record: TimeRecord, odd_version: int, cr3: int) -> bool:
    """``update_secondary_system_time``: the same update, under the same versions, in the guest's
    own area at ``va`` (through its page tables ``cr3``); False if the first store faulted."""
    if not guest.write(va, struct.pack("<I", odd_version), cr3):
        return False
    guest.write(va + 4, record.pack(odd_version)[4:], cr3)
    guest.write(va, struct.pack("<I", version_update_end(odd_version)), cr3)
    return True


WALLCLOCK = struct.Struct("<III")            # wc_version, wc_sec, wc_nsec (contiguous, both ABIs)


def write_wallclock(view, shared_info_ma: int, abi, wc_sec: int, wc_nsec: int) -> None:
    """``update_domain_wallclock_time``: the wall time at system time 0, under ``wc_version``."""
    base = shared_info_ma + abi.wc_version
    version = struct.unpack_from("<I", view, base)[0]
    version = version_update_begin(version)
    struct.pack_into("<I", view, base, version)
    struct.pack_into("<II", view, shared_info_ma + abi.wc_sec, wc_sec & 0xFFFFFFFF, wc_nsec)
    struct.pack_into("<I", view, shared_info_ma + abi.wc_sec_hi, (wc_sec >> 32) & 0xFFFFFFFF)
    struct.pack_into("<I", view, base, version_update_end(version))


def read_wallclock(view, shared_info_ma: int, abi) -> tuple[int, int, int]:
    """(wc_version, seconds, nanoseconds) as a guest would read them."""
    version, sec, nsec = WALLCLOCK.unpack_from(view, shared_info_ma + abi.wc_version)
    hi = struct.unpack_from("<I", view, shared_info_ma + abi.wc_sec_hi)[0]
    return version, sec | hi << 32, nsec

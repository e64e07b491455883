"""Trap table, callbacks, kernel stack, FPU and debug registers (Xen's ``pv/callback.c``, ``traps.c``).

``set_trap_table`` is additive: each entry replaces one vector, and an entry with address 0 ends the
list (entries already registered for other vectors stay). ``stack_switch`` records the kernel stack
Xen switches to when a trap arrives from user mode. Callback addresses are not checked when they are
registered; a bad one faults when Xen enters it, and that crashes the domain.
"""

from __future__ import annotations

import struct

from xendbg.machine.abi import xen as X
from xendbg.machine.abi.errno import EFAULT, EINVAL, ENOSYS, EPERM
from xendbg.machine.domain import Callback, TrapInfo

TRAP_TABLE_MAX = 256           # Xen walks at most one entry per vector before asking to be restarted


def do_set_trap_table(m, traps: int) -> int:
    vcpu = m.vcpu
    abi = m.abi
    if traps == 0:
        vcpu.trap_table.clear()    # a NULL table resets every vector
        return 0
    size = abi.trap_info_size
    for i in range(TRAP_TABLE_MAX + 1):
        raw = m.guest.read(traps + i * size, size)
        if raw is None:
            return -EFAULT
        vector, flags, cs = struct.unpack_from("<BBH", raw)
        address = int.from_bytes(raw[abi.trap_info_address:size], "little")
        if address == 0:
            return 0
        if abi.bits == 32 and cs & 3 == 0:
            cs |= 1            # Xen fixes up a ring-0 selector to the guest's ring
        vcpu.trap_table[vector] = TrapInfo(vector, flags, cs, address)
    return -EINVAL


def _register(m, cb_type: int, address: int, cs: int = 0, flags: int = 0) -> int:
    allowed = {X.CALLBACKTYPE_event, X.CALLBACKTYPE_failsafe, X.CALLBACKTYPE_nmi}
    if m.abi.bits == 64:
        allowed |= {X.CALLBACKTYPE_syscall, X.CALLBACKTYPE_syscall32, X.CALLBACKTYPE_sysenter}
    else:
        allowed |= {X.CALLBACKTYPE_sysenter}
    if cb_type not in allowed:
        return -EINVAL
    if cb_type == X.CALLBACKTYPE_nmi and flags:
        return -EINVAL
    m.vcpu.callbacks[cb_type] = Callback(address, cs, flags)
    return 0


def do_set_callbacks(m, a1: int, a2: int, a3: int, a4: int = 0) -> int:
    """64-bit: (event, failsafe, syscall); 32-bit: (event_cs, event_eip, failsafe_cs, failsafe_eip)."""
    if m.abi.bits == 64:
        _register(m, X.CALLBACKTYPE_event, a1)
        _register(m, X.CALLBACKTYPE_failsafe, a2)
        _register(m, X.CALLBACKTYPE_syscall, a3)
    else:
        _register(m, X.CALLBACKTYPE_event, a2, a1)
        _register(m, X.CALLBACKTYPE_failsafe, a4, a3)
    return 0


def do_callback_op(m, cmd: int, arg: int) -> int:
    if cmd == X.CALLBACKOP_register:
        size = 16 if m.abi.bits == 64 else 12
        raw = m.guest.read(arg, size)
        if raw is None:
            return -EFAULT
        cb_type, flags = struct.unpack_from("<HH", raw)
        if m.abi.bits == 64:
            (address,) = struct.unpack_from("<Q", raw, 8)
            return _register(m, cb_type, address, 0, flags)
        cs, address = struct.unpack_from("<II", raw, 4)
        return _register(m, cb_type, address, cs, flags)
    if cmd == X.CALLBACKOP_unregister:
        raw = m.guest.read(arg, 2)
        if raw is None:
            return -EFAULT
        (cb_type,) = struct.unpack_from("<H", raw)
        if cb_type in (X.CALLBACKTYPE_event, X.CALLBACKTYPE_failsafe):
            return -EINVAL     # Xen refuses to unregister these two
        if cb_type not in X.CALLBACK_NAMES:
            return -EINVAL
        m.vcpu.callbacks.pop(cb_type, None)
        return 0
    return -ENOSYS


def do_stack_switch(m, ss: int, sp: int) -> int:
    # Xen accepts any selector and only raises its RPL to the guest kernel's ring
    # (fixup_guest_stack_selector); a selector that will not load is found when a trap from
    # user mode needs it, and that crashes the domain (traps.py).
    kernel_rpl = 1 if m.abi.bits == 32 else 3
    ss &= 0xFFFF
    if ss & 3 < kernel_rpl:
        ss = (ss & ~3) | kernel_rpl
    m.vcpu.kernel_ss = ss
    m.vcpu.kernel_sp = sp
    return 0


def do_fpu_taskswitch(m, set_ts: int) -> int:
    m.set_fpu_ts(bool(set_ts))
    return 0


DR7_RESERVED_ONE = 0x400
DR6_DEFAULT = 0xFFFF0FF0


def do_set_debugreg(m, reg: int, value: int) -> int:
    vcpu = m.vcpu
    if reg < 0 or reg > 7 or reg in (4, 5):
        return -EINVAL
    if reg < 4:
        limit = m.abi.hypervisor_start if m.abi.bits == 32 else 1 << 47
        if value >= limit and not (m.abi.bits == 64 and value >= m.abi.hypervisor_end):
            return -EPERM      # breakpoints may not point into Xen
        vcpu.debugreg[reg] = value
        return 0
    if reg == 6:
        vcpu.debugreg[6] = (value & 0xE00F) | DR6_DEFAULT
        return 0
    if value >> 32:
        return -EINVAL
    vcpu.debugreg[7] = value | DR7_RESERVED_ONE
    return 0


def do_get_debugreg(m, reg: int) -> int:
    if reg < 0 or reg > 7 or reg in (4, 5):
        return -EINVAL
    value = m.vcpu.debugreg[reg]
    if reg == 6:
        value |= DR6_DEFAULT
    if reg == 7:
        value |= DR7_RESERVED_ONE
    return value

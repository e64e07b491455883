"""``sched_op`` and its old form ``sched_op_compat`` (Xen's ``common/sched/core.c``).

Scheduling decisions are the machine's (there is one vCPU on one emulated CPU): ``yield`` lets the
backends run (the console ring is drained, xenstore answers), ``block`` waits for an event,
``shutdown`` ends the domain with its reason.
"""

from __future__ import annotations

import struct

from xendbg.machine.abi import xen as X
from xendbg.machine.abi.errno import EFAULT, EINVAL, ENOSYS, EPERM


def do_sched_op(m, cmd: int, arg: int) -> int:
    if cmd == X.SCHEDOP_yield:
        m.run_backends()
        return 0
    if cmd == X.SCHEDOP_block:
        return m.block_vcpu()
    if cmd in (X.SCHEDOP_shutdown, X.SCHEDOP_shutdown_code):
        raw = m.guest.read(arg, 4)
        if raw is None:
            return -EFAULT
        (reason,) = struct.unpack("<I", raw)
        return _shutdown(m, cmd, reason)
    if cmd == X.SCHEDOP_poll:
        return m.poll_vcpu(arg)
    if cmd == X.SCHEDOP_remote_shutdown:
        raw = m.guest.read(arg, 8)
        if raw is None:
            return -EFAULT
        domid, reason = struct.unpack("<H2xI", raw)
        if domid in (X.DOMID_SELF, m.domain.domid):
            return _shutdown(m, X.SCHEDOP_shutdown, reason)
        return -EPERM       # an unprivileged domain may not shut others down
    if cmd == X.SCHEDOP_watchdog:
        raw = m.guest.read(arg, 8)              # struct sched_watchdog {u32 id; u32 timeout}
        if raw is None:
            return -EFAULT
        wid, timeout = struct.unpack("<II", raw)
        return m.clock.domain_watchdog(wid, timeout)
    if cmd == X.SCHEDOP_pin_override:
        return -EPERM       # hardware domain only
    return -EINVAL


def do_sched_op_compat(m, cmd: int, arg: int) -> int:
    """The old ABI passes the shutdown reason itself instead of a pointer."""
    if cmd in (X.SCHEDOP_yield, X.SCHEDOP_block):
        return do_sched_op(m, cmd, 0)
    if cmd == X.SCHEDOP_shutdown:
        return _shutdown(m, cmd, arg)
    return -ENOSYS


def _shutdown(m, cmd: int, reason: int) -> int:
    if reason > X.SHUTDOWN_soft_reset:
        return -EINVAL
    if cmd == X.SCHEDOP_shutdown_code:
        m.domain.shutdown_code = reason
        return 0
    m.shutdown(reason)
    return 0

"""``vcpu_op`` and ``set_timer_op``: a domU's vCPU operations and its timers.

Xen's ``do_vcpu_op`` (``common/domain.c``, ``arch/x86/domain.c``) and, for a 32-bit guest,
``compat_vcpu_op`` (``common/compat/domain.c``, ``arch/x86/x86_64/domain.c``), answered as they answer
an unprivileged PV domain:

* a vCPU id the domain does not have is ``-ENOENT`` for every command (``domain_vcpu`` is NULL); the
  id is an ``unsigned int`` and the command an ``int``, so only the low 32 bits of each count;
* ``initialise`` copies the whole ``vcpu_guest_context`` in (``-EFAULT``) and refuses a vCPU that is
  already initialised (``-EEXIST``) — every vCPU xendbg builds is; ``up`` of a running vCPU is 0;
  ``down`` of the last running vCPU powers the domain off; ``is_up`` is 1 or 0;
* timers: ``set_periodic_timer`` (at least 1 ms, else ``-EINVAL``), ``stop_periodic_timer``,
  ``set_singleshot_timer`` (with ``VCPU_SSHOTTMR_future`` a deadline already past is ``-ETIME``;
  without it, it fires at once), ``stop_singleshot_timer``; the single-shot ones only on the calling
  vCPU (``-EINVAL``);
* ``register_vcpu_info`` moves the vCPU's ``vcpu_info`` into a page of the guest: once only, not
  crossing a page, in a frame the domain owns and that can take a writable type (else ``-EINVAL``);
  the old contents are copied and every event is marked pending, so none is lost (``map_vcpu_info``);
* ``get_runstate_info``, ``register_runstate_memory_area``; ``register_vcpu_time_memory_area``
  (64-bit only; ``-ENOSYS`` for a 32-bit guest, as ``arch_compat_vcpu_op`` has no case for it);
* ``send_nmi`` (``-EINVAL`` unless its argument is NULL) delivers an NMI to the guest's NMI
  callback or trap 2, or drops it when there is none (``set_guest_nmi_trapbounce``); the NMI stays
  deliverable while one is being handled (Xen masks further NMIs until the next ``iret``:
  not modelled);
* ``get_physid`` is for the hardware domain's pinned vCPUs: ``-EINVAL``; anything else ``-ENOSYS``.

``set_timer_op(timeout)`` (``do_set_timer_op``) arms the single-shot timer at an absolute system
time (0 stops it). A deadline that wrapped negative or lies more than 2**50 ns (about 13 days) ahead
is taken as 100 ms from now, Xen's work-around for old Linux jiffies arithmetic. The 32-bit ABI
passes the 64-bit timeout as two registers, low half first.
"""

from __future__ import annotations

import struct

from xendbg.machine.abi import xen as X
from xendbg.machine.abi.errno import EEXIST, EFAULT, EINVAL, ENOENT, ENOSYS, ETIME
from xendbg.machine.abi.layout import VCPU_INFO_SIZE
from xendbg.machine.clock.runstate import RUNSTATE_offline, runstate_layout
from xendbg.machine.clock.timer import MILLISECS, STIME_DELTA_MAX
from xendbg.machine.memory import PAGE_SHIFT, PAGE_SIZE

VCPU_GUEST_CONTEXT_SIZE = {64: 5168, 32: 2800}     # copied in whole by VCPUOP_initialise
SINGLESHOT_SIZE = {64: 16, 32: 12}                 # {u64 timeout_abs_ns; u32 flags} (+pad on 64)
TIME_INFO_SIZE = 32
HUGE_TIMEOUT_FALLBACK = 100 * MILLISECS


def _signed64(value: int) -> int:
    value &= (1 << 64) - 1
    return value - (1 << 64) if value >> 63 else value


# -- set_timer_op ------------------------------------------------------------------------------------

def set_timer(m, timeout: int) -> int:
    """``do_set_timer_op`` with the timeout as Xen's ``s_time_t`` (signed 64-bit)."""
    clock = m.clock
    vcpu_id = m.vcpu.vcpu_id
    if timeout == 0:
        clock.stop_singleshot(vcpu_id)
        return 0
    now = clock.now_ns()
    offset = timeout - now
    if timeout < 0 or (offset > 0 and (offset >> 50) & 0xFFFFFFFF):
        clock.set_singleshot(vcpu_id, now + HUGE_TIMEOUT_FALLBACK)
    else:
        clock.set_singleshot(vcpu_id, timeout)
    return 0


def do_set_timer_op(m, timeout: int) -> int:
    return set_timer(m, _signed64(timeout))


def do_set_timer_op32(m, timeout_lo: int, timeout_hi: int) -> int:
    return set_timer(m, _signed64((timeout_hi & 0xFFFFFFFF) << 32 | (timeout_lo & 0xFFFFFFFF)))


# -- vcpu_op ---------------------------------------------------------------------------------------

def do_vcpu_op(m, cmd: int, vcpuid: int, arg: int) -> int:
    cmd &= 0xFFFFFFFF
    vcpuid &= 0xFFFFFFFF
    if vcpuid >= len(m.domain.vcpus):
        return -ENOENT
    v = m.domain.vcpus[vcpuid]
    handler = _OPS.get(cmd)
    if handler is None:
        return -ENOSYS
    return handler(m, v, arg)


def vcpuop_initialise(m, v, arg: int) -> int:
    if m.guest.read(arg, VCPU_GUEST_CONTEXT_SIZE[m.abi.bits]) is None:
        return -EFAULT
    return -EEXIST            # every vCPU of the domain was initialised by the domain builder


def vcpuop_up(m, v, arg: int) -> int:
    if not v.online:
        # An initialised vCPU that was taken down comes back runnable; xendbg runs one vCPU
        # only, so a second one could not be scheduled.
        return -ENOSYS
    return 0


def vcpuop_down(m, v, arg: int) -> int:
    others_up = any(o.online for o in m.domain.vcpus if o.vcpu_id != v.vcpu_id)
    if not others_up:
        m.shutdown(X.SHUTDOWN_poweroff)      # the last vCPU going down: domain_shutdown
        return 0
    if v.online:
        v.online = False
        vt = m.clock.vcpus[v.vcpu_id]
        vt.running = False
        vt.runstate.change(RUNSTATE_offline, m.clock.now_ns())
    return 0


def vcpuop_is_up(m, v, arg: int) -> int:
    return 1 if v.online else 0


def vcpuop_get_runstate_info(m, v, arg: int) -> int:
    data = m.clock.runstate_info(v.vcpu_id).pack(m.abi.bits)
    return 0 if m.guest.write(arg, data) else -EFAULT


def _read_handle(m, arg: int) -> int | None:
    """A ``{union {ptr; u64 p} addr}``: the guest VA it holds (a 32-bit guest's is 32 bits)."""
    raw = m.guest.read(arg, 8)
    if raw is None:
        return None
    value = struct.unpack("<Q", raw)[0]
    return value if m.is64 else value & 0xFFFFFFFF


def vcpuop_register_runstate_memory_area(m, v, arg: int) -> int:
    va = _read_handle(m, arg)
    if va is None:
        return -EFAULT
    layout, _ = runstate_layout(m.abi.bits)
    if not m.guest.accessible(va, layout.size):          # guest_handle_okay
        return -EFAULT
    m.clock.register_runstate_area(v.vcpu_id, va)
    return 0


def vcpuop_set_periodic_timer(m, v, arg: int) -> int:
    period = m.guest.read_u64(arg)
    if period is None:
        return -EFAULT
    if period < MILLISECS or period > STIME_DELTA_MAX:
        return -EINVAL
    m.clock.set_periodic(v.vcpu_id, period)
    return 0


def vcpuop_stop_periodic_timer(m, v, arg: int) -> int:
    m.clock.set_periodic(v.vcpu_id, 0)
    return 0


def vcpuop_set_singleshot_timer(m, v, arg: int) -> int:
    if v is not m.vcpu:
        return -EINVAL
    raw = m.guest.read(arg, SINGLESHOT_SIZE[m.abi.bits])
    if raw is None:
        return -EFAULT
    timeout, flags = struct.unpack_from("<QI", raw)
    # The deadline is a uint64_t compared with NOW() as unsigned, then handed to set_timer as a
    # signed s_time_t: one past 2**63 is "in the future" here and expires at once.
    if flags & X.VCPU_SSHOTTMR_future and timeout < m.clock.now_ns():
        return -ETIME
    m.clock.set_singleshot(v.vcpu_id, _signed64(timeout))
    return 0


def vcpuop_stop_singleshot_timer(m, v, arg: int) -> int:
    if v is not m.vcpu:
        return -EINVAL
    m.clock.stop_singleshot(v.vcpu_id)
    return 0


def vcpuop_register_vcpu_info(m, v, arg: int) -> int:
    raw = m.guest.read(arg, 16)
    if raw is None:
        return -EFAULT
    mfn, offset = struct.unpack_from("<QI", raw)
    return map_vcpu_info(m, v, mfn, offset)


def map_vcpu_info(m, v, mfn: int, offset: int) -> int:
    """Xen's ``map_vcpu_info``: move ``v``'s ``vcpu_info`` to ``mfn`` + ``offset``."""
    vt = m.clock.vcpus[v.vcpu_id]
    if offset > PAGE_SIZE - VCPU_INFO_SIZE:
        return -EINVAL
    if vt.vcpu_info_mfn is not None:                     # only once per vCPU
        return -EINVAL
    if v is not m.vcpu and v.online:
        return -EINVAL
    # For a PV guest the gfn is the mfn; the frame must be the domain's and writable.
    if not m.owns_frame(mfn) or not m.mmu.hold(mfn, writable=True):
        return -EINVAL
    view = m.memory.view
    old = v.vcpu_info_ma
    new = (mfn << PAGE_SHIFT) + offset
    view[new:new + VCPU_INFO_SIZE] = bytes(view[old:old + VCPU_INFO_SIZE])
    v.vcpu_info_ma = new
    vt.vcpu_info_mfn = mfn
    # Mark everything pending so that nothing raised around the move is lost.
    word = m.abi.word
    sel = new + m.abi.vcpu_pending_sel
    view[sel:sel + word] = b"\xff" * word
    if not view[new]:
        view[new] = 1                                    # evtchn_upcall_pending
        m.on_event_pending(v, -1)
    return 0


def vcpuop_send_nmi(m, v, arg: int) -> int:
    if arg != 0:
        return -EINVAL
    cb = v.callbacks.get(X.CALLBACKTYPE_nmi)
    if cb is not None and cb.address:
        # register_guest_nmi_callback makes it trap 2 with events masked on entry.
        m.traps.bounce(v, cb.address, kind="nmi", vector=2, interrupt=True, target_cs=cb.cs)
        return 0
    ti = v.trap_table.get(2)
    if ti is not None and ti.address:
        m.traps.bounce(v, ti.address, kind="nmi", vector=2,
                       interrupt=bool(ti.flags & X.TI_CLEAR_IF), target_cs=ti.cs)
    return 0                  # no handler: the NMI is dropped, as Xen drops it


def vcpuop_get_physid(m, v, arg: int) -> int:
    return -EINVAL            # only for the hardware domain's pinned vCPUs


def vcpuop_register_vcpu_time_memory_area(m, v, arg: int) -> int:
    if not m.is64:
        return -ENOSYS        # compat_vcpu_op has no such case
    va = _read_handle(m, arg)
    if va is None or not m.guest.accessible(va, TIME_INFO_SIZE):
        return -EFAULT
    m.clock.register_time_area(v.vcpu_id, va)
    return 0


_OPS = {
    X.VCPUOP_initialise: vcpuop_initialise,
    X.VCPUOP_up: vcpuop_up,
    X.VCPUOP_down: vcpuop_down,
    X.VCPUOP_is_up: vcpuop_is_up,
    X.VCPUOP_get_runstate_info: vcpuop_get_runstate_info,
    X.VCPUOP_register_runstate_memory_area: vcpuop_register_runstate_memory_area,
    X.VCPUOP_set_periodic_timer: vcpuop_set_periodic_timer,
    X.VCPUOP_stop_periodic_timer: vcpuop_stop_periodic_timer,
    X.VCPUOP_set_singleshot_timer: vcpuop_set_singleshot_timer,
    X.VCPUOP_stop_singleshot_timer: vcpuop_stop_singleshot_timer,
    X.VCPUOP_register_vcpu_info: vcpuop_register_vcpu_info,
    X.VCPUOP_send_nmi: vcpuop_send_nmi,
    X.VCPUOP_get_physid: vcpuop_get_physid,
    X.VCPUOP_register_vcpu_time_memory_area: vcpuop_register_vcpu_time_memory_area,
}

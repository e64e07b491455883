"""Virtual time: the TSC, pvclock records, wallclock, timers, vcpu_op and blocking (issue #5).

Machine-level tests on a built lab machine (``hello-pv64``/``hello-pv32``, not run unless said):
hypercalls are made through ``Machine.dispatch`` with their arguments in a scratch guest page, and
virtual time is moved by setting the block counter, as executed instructions would.
"""

from __future__ import annotations

import calendar
import struct

import pytest

from xendbg.fast import pvclock
from xendbg.machine import vcpu_op
from xendbg.machine.abi import xen as X
from xendbg.machine.abi.errno import EEXIST, EFAULT, EINVAL, ENOENT, ENOSYS, ETIME
from xendbg.machine.clock import ClockConfig
from xendbg.machine.clock.runstate import XEN_RUNSTATE_UPDATE, RUNSTATE_blocked, RUNSTATE_running
from xendbg.machine.clock.time_info import (
    TimeRecord,
    read_time_info,
    read_wallclock,
    version_update_begin,
    write_time_info,
)
from xendbg.machine.memory import PAGE_SHIFT

MS = 1_000_000
SEC = 1_000_000_000
JAN_2026 = 1_767_225_600
X_TSC_STABLE = 1


@pytest.fixture(params=["hello-pv64", "hello-pv32"])
def m(request, lab_machine):
    return lab_machine(request.param)


@pytest.fixture
def m64(lab_machine):
    return lab_machine("hello-pv64")


def hcall(m, nr: int, *args: int) -> int:
    return m.dispatch(nr, list(args), 0)


def vcpuop(m, cmd: int, vcpuid: int = 0, arg: int = 0) -> int:
    return hcall(m, X.HYPERVISOR_vcpu_op, cmd, vcpuid, arg)


def at(m, ns: int) -> None:
    """Make virtual time ``ns`` by setting the instruction count (1 instruction = 1 ns here)."""
    m.counter.insns = ns * m.clock.tsc_hz // 10**9 // m.clock.tsc_per_insn


def record(m, vcpu=None):
    vcpu = vcpu or m.vcpu
    return read_time_info(m.memory.view, vcpu.vcpu_info_ma + m.abi.vcpu_time)


def bind_virq_timer(m) -> int:
    buf = bytearray(struct.pack("<III", X.VIRQ_TIMER, 0, 0))

    def write(off: int, data: bytes) -> bool:
        buf[off:off + len(data)] = data
        return True

    assert m.evtchn.op(X.EVTCHNOP_bind_virq, lambda n: bytes(buf[:n]), write) == 0
    return struct.unpack_from("<I", buf, 8)[0]


def pending(m, port: int) -> bool:
    return m.evtchn.delivery.is_pending(port)


def singleshot(m, va: int, deadline: int, flags: int = 0) -> int:
    size = 16 if m.is64 else 12
    m.guest.write(va, struct.pack("<QI", deadline, flags).ljust(size, b"\0"))
    return vcpuop(m, X.VCPUOP_set_singleshot_timer, 0, va)


# -- the TSC and the published records -----------------------------------------------------------

def test_tsc_and_system_time_follow_instructions(m):
    assert m.clock.tsc() == 0 and m.clock.now_ns() == 0
    m.counter.insns = 12345
    assert m.read_tsc() == 2 * 12345              # 2 GHz, 2 ticks per instruction
    assert m.clock.now_ns() == 12345               # so one instruction is one nanosecond


def test_record_published_at_start(m):
    version, rec = record(m)
    assert version == 2                            # written once, under the seqlock: 0 → 1 → 2
    assert rec == TimeRecord(0, 0, 1 << 31, 0, X_TSC_STABLE)
    # what a guest computes from it is Xen's NOW(), to the nanosecond
    m.counter.insns = 777
    assert pvclock.pvclock_read(rec.system_time, rec.tsc_timestamp, rec.tsc_to_system_mul,
                                rec.tsc_shift, m.clock.tsc()) == m.clock.now_ns() == 777


def test_wallclock_is_a_fixed_date(m):
    version, sec, nsec = read_wallclock(m.memory.view, m.domain.shared_info_mfn << PAGE_SHIFT,
                                        m.abi)
    assert (version, sec, nsec) == (2, JAN_2026, 0)
    m.counter.insns = 3 * SEC
    assert m.clock.wallclock_ns() == (JAN_2026 + 3) * SEC


def test_wallclock_configurable_with_sec_hi(m):
    m.clock.configure(ClockConfig.starting_at("2200-06-01T12:00:00.25Z"))
    version, sec, nsec = read_wallclock(m.memory.view, m.domain.shared_info_mfn << PAGE_SHIFT,
                                        m.abi)
    assert version % 2 == 0 and version > 2
    assert sec == calendar.timegm((2200, 6, 1, 12, 0, 0)) and nsec == 250_000_000
    assert sec >> 32 == 1                                      # wc_sec_hi is needed
    m.counter.insns = 1
    with pytest.raises(RuntimeError):
        m.clock.configure(ClockConfig())


@pytest.mark.parametrize("khz, per_insn", [(3_000_000, 3), (1_000_000, 1), (2_500_000, 7)])
def test_other_tsc_rates(lab_machine, khz, per_insn):
    m = lab_machine("hello-pv64")
    m.clock.configure(ClockConfig(tsc_khz=khz, tsc_per_insn=per_insn))
    _, rec = record(m)
    assert (rec.tsc_to_system_mul, rec.tsc_shift) == pvclock.set_time_scale(khz * 1000)
    m.counter.insns = 10**6
    assert m.clock.tsc() == 10**6 * per_insn
    assert m.clock.now_ns() == pvclock.scale_delta(10**6 * per_insn, rec.tsc_to_system_mul,
                                                   rec.tsc_shift)


@pytest.mark.parametrize("bad", [dict(tsc_khz=0), dict(tsc_per_insn=0), dict(epoch_ns=5),
                                 dict(wallclock_ns=-1)])
def test_bad_configuration(bad):
    with pytest.raises(ValueError):
        ClockConfig(**bad)


def test_version_protocol():
    buf = bytearray(64)
    rec = TimeRecord(1, 2, 3, -4, 1)
    assert write_time_info(buf, 0, rec, force=False) == 1         # odd while writing
    assert read_time_info(buf, 0) == (2, rec)                    # even when done
    assert write_time_info(buf, 0, rec, force=False) is None     # unchanged: not rewritten
    assert write_time_info(buf, 0, rec, force=True) == 3
    struct.pack_into("<I", buf, 0, 7)                             # a torn (odd) version
    assert version_update_begin(7) == 9 and write_time_info(buf, 0, rec, True) == 9
    assert read_time_info(buf, 0)[0] == 10


def test_calibration_restamps_and_republishes(m):
    at(m, SEC)                                    # the calibration timer is due at 1 s
    assert m.clock.next_deadline() <= m.counter.insns
    m.clock.at_slice_boundary()
    version, rec = record(m)
    assert version == 4
    assert rec.tsc_timestamp == m.clock.tsc() and rec.system_time == SEC
    m.counter.insns += 4321
    assert pvclock.pvclock_read(rec.system_time, rec.tsc_timestamp, rec.tsc_to_system_mul,
                                rec.tsc_shift, m.clock.tsc()) == m.clock.now_ns()


def test_periodic_timer_on_by_default(m):
    timers = {t.name: t for t in m.clock.pending_timers()}
    assert timers["vcpu0.periodic"].period == 10 * MS
    assert timers["vcpu0.periodic"].deadline == 10 * MS
    assert m.clock.next_deadline() == 10 * MS      # instructions, at one per ns


def test_periodic_ticks_raise_virq_timer(m):
    port = bind_virq_timer(m)
    ticks = 0
    for k in range(1, 101):
        at(m, k * 10 * MS)
        m.clock.at_slice_boundary()
        ticks += pending(m, port)
        m.evtchn.delivery.clear_pending(port)
    assert ticks == 100                            # 100 Hz over one virtual second


# -- set_timer_op and VCPUOP timers ----------------------------------------------------------------

def test_set_timer_op(m, scratch_va):
    scratch_va = scratch_va(m)
    port = bind_virq_timer(m)
    at(m, 5 * MS)
    args = (6 * MS,) if m.is64 else (6 * MS, 0)
    assert hcall(m, X.HYPERVISOR_set_timer_op, *args) == 0
    assert m.clock.vcpus[0].singleshot.deadline == 6 * MS
    assert m.clock.next_deadline() == 6 * MS
    at(m, 6 * MS)
    m.clock.at_slice_boundary()
    assert pending(m, port) and not m.clock.vcpus[0].singleshot.armed
    # 0 stops it; a wrapped-negative or huge deadline becomes 100 ms from now
    hcall(m, X.HYPERVISOR_set_timer_op, *((7 * MS,) if m.is64 else (7 * MS, 0)))
    hcall(m, X.HYPERVISOR_set_timer_op, *((0,) if m.is64 else (0, 0)))
    assert not m.clock.vcpus[0].singleshot.armed
    huge = (6 * MS + (1 << 50)) if m.is64 else None
    for value in filter(None, (huge, (1 << 64) - 5)):
        args = (value,) if m.is64 else (value & 0xFFFFFFFF, value >> 32)
        assert hcall(m, X.HYPERVISOR_set_timer_op, *args) == 0
        assert m.clock.vcpus[0].singleshot.deadline == 6 * MS + 100 * MS


def test_set_timer_op_32bit_takes_two_halves(lab_machine):
    m = lab_machine("hello-pv32")
    deadline = (3 << 32) + 12345
    assert hcall(m, X.HYPERVISOR_set_timer_op, deadline & 0xFFFFFFFF, deadline >> 32) == 0
    assert m.clock.vcpus[0].singleshot.deadline == deadline


def test_singleshot_future_flag(m, scratch_va):
    scratch_va = scratch_va(m)
    port = bind_virq_timer(m)
    at(m, 5 * MS)
    assert singleshot(m, scratch_va, 4 * MS, X.VCPU_SSHOTTMR_future) == -ETIME
    assert not m.clock.vcpus[0].singleshot.armed
    assert singleshot(m, scratch_va, 4 * MS) == 0          # without the flag: fires at once
    m.clock.check_timers()                                 # on the way out of the hypercall
    assert pending(m, port)
    assert singleshot(m, scratch_va, 9 * MS, X.VCPU_SSHOTTMR_future) == 0
    assert m.clock.vcpus[0].singleshot.deadline == 9 * MS
    assert vcpuop(m, X.VCPUOP_stop_singleshot_timer) == 0
    assert not m.clock.vcpus[0].singleshot.armed


def test_singleshot_beyond_2_63_expires_at_once(m64, scratch_va):
    m = m64
    scratch_va = scratch_va(m)
    port = bind_virq_timer(m)
    # uint64 compared unsigned ("future"), then set as a negative s_time_t: already expired
    assert singleshot(m, scratch_va, (1 << 63) + 5, X.VCPU_SSHOTTMR_future) == 0
    m.clock.check_timers()
    assert pending(m, port)


def test_arming_a_timer_lowers_the_running_budget(m, scratch_va):
    scratch_va = scratch_va(m)
    m.counter.budget = 10 * MS                     # the slice was planned up to the 100 Hz tick
    at(m, 1 * MS)
    singleshot(m, scratch_va, 2 * MS)
    assert m.counter.budget == 2 * MS


def test_periodic_timer_limits_and_restart(m, scratch_va):
    scratch_va = scratch_va(m)
    def set_period(ns: int) -> int:
        m.guest.write(scratch_va, struct.pack("<Q", ns))
        return vcpuop(m, X.VCPUOP_set_periodic_timer, 0, scratch_va)

    assert set_period(MS - 1) == -EINVAL
    assert set_period(1 << 63) == -EINVAL
    at(m, 3 * MS)
    assert set_period(5 * MS) == 0
    assert m.clock.vcpus[0].periodic.deadline == 8 * MS      # restarted from now
    at(m, 4 * MS)
    assert set_period(5 * MS) == 0                           # the same period: left alone
    assert m.clock.vcpus[0].periodic.deadline == 8 * MS
    assert vcpuop(m, X.VCPUOP_stop_periodic_timer) == 0
    assert not m.clock.vcpus[0].periodic.armed
    assert vcpuop(m, X.VCPUOP_set_periodic_timer, 0, 0x10) == -EFAULT


# -- vcpu_op answers ---------------------------------------------------------------------------------

@pytest.mark.parametrize("cmd", range(0, 16))
def test_vcpu_op_on_a_vcpu_that_does_not_exist(m, cmd):
    assert vcpuop(m, cmd, 1, 0) == -ENOENT
    assert vcpuop(m, cmd, 0xFFFFFFFF, 0) == -ENOENT


def test_vcpu_op_simple_answers(m, scratch_va):
    scratch_va = scratch_va(m)
    assert vcpuop(m, X.VCPUOP_is_up, 0) == 1
    assert vcpuop(m, X.VCPUOP_up, 0) == 0
    assert vcpuop(m, X.VCPUOP_initialise, 0, scratch_va) == -EEXIST
    assert vcpuop(m, X.VCPUOP_initialise, 0, 0) == -EFAULT
    assert vcpuop(m, X.VCPUOP_get_physid, 0, scratch_va) == -EINVAL
    assert vcpuop(m, X.VCPUOP_send_nmi, 0, 8) == -EINVAL
    assert vcpuop(m, X.VCPUOP_send_nmi, 0, 0) == 0               # no handler: dropped
    assert not m.domain.dying
    assert vcpuop(m, 14, 0, 0) == -ENOSYS and vcpuop(m, 99, 0, 0) == -ENOSYS
    assert vcpuop(m, 1 << 32 | X.VCPUOP_is_up, 0) == 1           # cmd is an int: low 32 bits


def test_vcpu_id_is_32_bits(m64):
    assert vcpuop(m64, X.VCPUOP_is_up, 1 << 32) == 1               # unsigned int vcpuid


def test_down_of_the_last_vcpu_powers_off(m):
    assert vcpuop(m, X.VCPUOP_down, 0) == 0
    assert m.domain.shutdown is not None and m.domain.shutdown.reason == X.SHUTDOWN_poweroff


def test_send_nmi_enters_the_nmi_callback(lab_machine):
    from xendbg.machine.domain import Callback
    m = lab_machine("hello-pv64")
    assert m.run(max_insns=200) == "budget"        # real guest registers to build a frame on
    m.vcpu.callbacks[X.CALLBACKTYPE_nmi] = Callback(0xFFFFFFFF80000000)
    assert vcpu_op.vcpuop_send_nmi(m, m.vcpu, 0) == 0
    assert m.cpu.ip == 0xFFFFFFFF80000000
    assert m.traps.upcall_mask(m.vcpu) == 1        # entered with events masked


def test_time_memory_area(m, scratch_va):
    scratch_va = scratch_va(m)
    area = scratch_va + 0x100
    m.guest.write(scratch_va, struct.pack("<Q", area))
    rc = vcpuop(m, X.VCPUOP_register_vcpu_time_memory_area, 0, scratch_va)
    if not m.is64:
        assert rc == -ENOSYS                       # no compat case for it
        return
    assert rc == 0
    version, rec = read_time_info(m.guest.read(area, 32), 0)
    assert (version, rec) == record(m)
    at(m, SEC)
    m.clock.at_slice_boundary()                    # calibration: both copies follow
    assert read_time_info(m.guest.read(area, 32), 0) == record(m)
    m.guest.write(scratch_va, struct.pack("<Q", 0xFFFF800000000000))
    assert vcpuop(m, X.VCPUOP_register_vcpu_time_memory_area, 0, scratch_va) == -EFAULT


# -- register_vcpu_info ------------------------------------------------------------------------------

def scratch_mfn(m, va: int) -> int:
    return m.guest.translate(va) >> PAGE_SHIFT


def register_vcpu_info(m, arg_va: int, mfn: int, offset: int) -> int:
    m.guest.write(arg_va, struct.pack("<QII", mfn, offset, 0))
    return vcpuop(m, X.VCPUOP_register_vcpu_info, 0, arg_va)


def test_register_vcpu_info_moves_and_copies(m, scratch_va):
    scratch_va = scratch_va(m)
    old = m.vcpu.vcpu_info_ma
    m.memory.view[old + 1] = 1                                 # events masked
    mfn = scratch_mfn(m, scratch_va + 0x1000)
    assert register_vcpu_info(m, scratch_va, mfn, 4096 - 63) == -EINVAL     # crosses the page
    assert register_vcpu_info(m, scratch_va, 0, 0x40) == -EINVAL            # not the domain's
    pt = m.layout.pt_base_mfn
    assert register_vcpu_info(m, scratch_va, pt, 0x40) == -EINVAL           # a page table
    assert register_vcpu_info(m, scratch_va, mfn, 0x40) == 0
    new = (mfn << PAGE_SHIFT) + 0x40
    assert m.vcpu.vcpu_info_ma == new
    view = m.memory.view
    assert bytes(view[new + 0x20:new + 0x40]) == bytes(view[old + 0x20:old + 0x40])
    assert view[new + 1] == 1 and view[new] == 1                            # mask, pending
    sel = new + m.abi.vcpu_pending_sel
    assert bytes(view[sel:sel + m.abi.word]) == b"\xff" * m.abi.word
    assert register_vcpu_info(m, scratch_va, mfn, 0x80) == -EINVAL          # once only
    at(m, SEC)
    m.clock.at_slice_boundary()
    assert record(m)[1].system_time == SEC                                  # updated there
    assert read_time_info(view, old + 0x20)[1].system_time == 0             # not here


# -- runstate -----------------------------------------------------------------------------------------

def runstate(m, raw: bytes):
    if m.is64:
        state, entry, *times = struct.unpack("<i4xQ4Q", raw)
    else:
        state, entry, *times = struct.unpack("<iQ4Q", raw)
    return state, entry, times


def test_get_runstate_info(m, scratch_va):
    scratch_va = scratch_va(m)
    at(m, 7 * MS)
    assert vcpuop(m, X.VCPUOP_get_runstate_info, 0, scratch_va) == 0
    size = 48 if m.is64 else 44
    state, entry, times = runstate(m, m.guest.read(scratch_va, size))
    assert (state, entry, times) == (RUNSTATE_running, 0, [7 * MS, 0, 0, 0])
    assert vcpuop(m, X.VCPUOP_get_runstate_info, 0, 0x10) == -EFAULT


def test_runstate_area_through_a_block(m, scratch_va):
    scratch_va = scratch_va(m)
    port = bind_virq_timer(m)
    area = scratch_va + 0x200
    m.guest.write(scratch_va, struct.pack("<Q", area))
    m.domain.vm_assist |= 1 << X.VMASST_TYPE_runstate_update_flag
    assert vcpuop(m, X.VCPUOP_register_runstate_memory_area, 0, scratch_va) == 0
    size = 48 if m.is64 else 44
    assert runstate(m, m.guest.read(area, size))[0] == RUNSTATE_running
    at(m, 2 * MS)
    singleshot(m, scratch_va + 0x400, 5 * MS)
    assert m.block_vcpu() == 0
    assert pending(m, port) and not m.vcpu.blocked
    state, entry, times = runstate(m, m.guest.read(area, size))
    assert state == RUNSTATE_running and entry == 5 * MS
    assert entry & XEN_RUNSTATE_UPDATE == 0
    assert times[RUNSTATE_running] == 2 * MS and times[RUNSTATE_blocked] == 3 * MS
    m.guest.write(scratch_va, struct.pack("<Q", 0xFFFF800000000000 if m.is64 else 0xF6000000))
    assert vcpuop(m, X.VCPUOP_register_runstate_memory_area, 0, scratch_va) == -EFAULT


# -- blocking ----------------------------------------------------------------------------------------

def test_block_fast_forwards_to_the_timer(m, scratch_va):
    scratch_va = scratch_va(m)
    port = bind_virq_timer(m)
    at(m, 1 * MS)
    insns = m.counter.insns
    singleshot(m, scratch_va, 1 * MS + 12345)
    assert m.block_vcpu() == 0
    assert not m.blocked_forever
    assert m.counter.insns == insns                # nothing executed while blocked ...
    assert m.clock.now_ns() == 1 * MS + 12345      # ... but time went to the deadline exactly
    assert m.clock.idle_tsc == 2 * 12345
    assert m.read_tsc() == 2 * (1 * MS + 12345)    # rdtsc includes the idle time
    assert pending(m, port)
    assert m.memory.view[m.vcpu.vcpu_info_ma + 1] == 0   # SCHEDOP_block unmasked events


def test_block_with_nothing_to_wake_it(m):
    bind_virq_timer(m)
    assert m.block_vcpu() == 0
    assert m.blocked_forever                        # the 100 Hz ticker never wakes a blocked vCPU
    assert m.vcpu.blocked


def test_a_timer_on_an_unbound_virq_does_not_wake(m, scratch_va):
    scratch_va = scratch_va(m)
    singleshot(m, scratch_va, 3 * MS)
    m.block_vcpu()
    assert m.blocked_forever and m.clock.vcpus[0].singleshot.fired == 1


def test_periodic_catch_up_event_at_wake(m, scratch_va):
    """The periodic timer is stopped while blocked; at wake-up one event makes up for it."""
    scratch_va = scratch_va(m)
    port = bind_virq_timer(m)
    singleshot(m, scratch_va, 55 * MS)
    m.block_vcpu()
    assert m.clock.now_ns() == 55 * MS
    assert m.clock.vcpus[0].periodic.fired == 0
    assert m.clock.vcpus[0].periodic.last_event == 55 * MS
    assert m.clock.vcpus[0].periodic.deadline == 65 * MS
    assert pending(m, port)


def test_long_block_goes_through_calibrations(m, scratch_va):
    scratch_va = scratch_va(m)
    bind_virq_timer(m)
    singleshot(m, scratch_va, 3600 * SEC + 17)      # an hour of sleep
    assert m.block_vcpu() == 0
    assert m.clock.now_ns() == 3600 * SEC + 17
    assert m.clock.calibration.fired == 3600
    assert m.clock.stamp_ns == 3600 * SEC
    _, rec = record(m)                                # republished at wake-up
    assert rec.system_time == 3600 * SEC


def test_block_to_an_unreachable_deadline_is_reported(m64, scratch_va):
    m = m64
    scratch_va = scratch_va(m)
    m.clock.configure(ClockConfig(tsc_khz=4_000_000, tsc_per_insn=4))
    bind_virq_timer(m)
    singleshot(m, scratch_va, (1 << 63) - 1)         # 292 years: 2**65 ticks at 4 GHz
    assert m.block_vcpu() == 0 and m.blocked_forever


def poll(m, va: int, ports: list[int], timeout: int) -> int:
    ports_va = va + 0x80
    m.guest.write(ports_va, struct.pack(f"<{len(ports)}I", *ports))
    if m.is64:
        m.guest.write(va, struct.pack("<QI4xQ", ports_va, len(ports), timeout))
    else:
        m.guest.write(va, struct.pack("<IIQ", ports_va, len(ports), timeout))
    return hcall(m, X.HYPERVISOR_sched_op, X.SCHEDOP_poll, va)


def test_poll_times_out(m, scratch_va):
    scratch_va = scratch_va(m)
    port = bind_virq_timer(m)
    at(m, 1 * MS)
    assert poll(m, scratch_va, [port], 4 * MS) == 0
    assert m.clock.now_ns() == 4 * MS and not m.blocked_forever and not m.vcpu.blocked


def test_poll_woken_by_a_masked_port(m, scratch_va):
    scratch_va = scratch_va(m)
    port = bind_virq_timer(m)
    m.evtchn.delivery.mask(port)
    singleshot(m, scratch_va + 0x400, 2 * MS)
    assert poll(m, scratch_va, [port], 0) == 0
    assert m.clock.now_ns() == 2 * MS and pending(m, port)


def test_poll_without_timeout_or_timer_is_blocked(m, scratch_va):
    scratch_va = scratch_va(m)
    port = bind_virq_timer(m)
    assert poll(m, scratch_va, [port], 0) == 0
    assert m.blocked_forever


def test_watchdog_shuts_the_domain_down(m, scratch_va):
    scratch_va = scratch_va(m)
    m.guest.write(scratch_va, struct.pack("<II", 0, 2))
    assert hcall(m, X.HYPERVISOR_sched_op, X.SCHEDOP_watchdog, scratch_va) == 1
    assert hcall(m, X.HYPERVISOR_sched_op, X.SCHEDOP_watchdog, scratch_va) == 2
    assert hcall(m, X.HYPERVISOR_sched_op, X.SCHEDOP_watchdog, scratch_va) == -28   # ENOSPC
    m.guest.write(scratch_va, struct.pack("<II", 2, 0))
    assert hcall(m, X.HYPERVISOR_sched_op, X.SCHEDOP_watchdog, scratch_va) == 0     # freed
    m.guest.write(scratch_va, struct.pack("<II", 3, 0))
    assert hcall(m, X.HYPERVISOR_sched_op, X.SCHEDOP_watchdog, scratch_va) == -EINVAL
    m.block_vcpu()
    assert m.domain.shutdown is not None and m.domain.shutdown.reason == X.SHUTDOWN_watchdog
    assert m.clock.now_ns() == 2 * SEC


def test_debugger_views_of_the_timers(m):
    names = set(m.clock.timers)
    assert {"vcpu0.singleshot", "vcpu0.periodic", "vcpu0.poll", "calibration", "watchdog0",
            "watchdog1"} <= names
    assert [t.name for t in m.clock.pending_timers()] == ["vcpu0.periodic", "calibration"]
    assert "vcpu0.periodic: at 10000000 ns, period 10000000 ns" in str(m.clock.timers[
        "vcpu0.periodic"])


def test_table_rows(m):
    from xendbg.machine import hypercalls
    assert hypercalls.BY_NR[15].handler_for(m.abi.bits) is not None
    assert hypercalls.BY_NR[24].handler is vcpu_op.do_vcpu_op
    assert hypercalls.BY_NR[15].args_for(32) == ("timeout_lo", "timeout_hi")


@pytest.mark.parametrize("khz, per_insn", [(2_000_000, 2), (2_500_000, 7), (3_000_000, 3)])
def test_the_quiet_range_shortcut_fires_exactly_when_now_reaches_the_deadline(lab_machine, khz,
                                                                               per_insn):
    """check_timers skips NOW() inside a cached range of instruction counts; at every count, the
    edges of that range included and the counter set back below it, a timer fires exactly when
    NOW() has reached the earliest deadline."""
    m = lab_machine("hello-pv64")
    m.clock.configure(ClockConfig(tsc_khz=khz, tsc_per_insn=per_insn))
    clock = m.clock
    probes, outcomes = [], set()
    for k in (1, 2, 3):
        clock._earliest()
        edge = clock._quiet_hi                      # the first count outside the quiet range
        probes += [edge - 2, edge - 1, edge, edge + 1, max(edge - 10**6, 0)]
        for insns in probes[-5:]:
            m.counter.insns = insns
            earliest = clock._earliest()
            due = earliest is not None and earliest <= clock.now_ns()
            fired = sum(t.fired for t in clock.pending_timers())
            clock.check_timers()
            assert (sum(t.fired for t in clock.pending_timers()) > fired) == due, (k, insns)
            outcomes.add(due)
    assert outcomes == {True, False}, "both sides of the edge were probed"

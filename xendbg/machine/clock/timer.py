"""The timers Xen keeps for a PV domain, as plain data (``xen/common/sched/core.c``, ``timer.c``).

Per vCPU:

* the **single-shot** timer (``set_timer_op``, ``VCPUOP_set_singleshot_timer``): fires once at an
  absolute system time and sends ``VIRQ_TIMER`` (``vcpu_singleshot_timer_fn``);
* the **periodic** timer (``VCPUOP_set_periodic_timer``; 10 ms for every new PV vCPU, the "100 Hz
  ticker" of ``pv_vcpu_initialise``): ``vcpu_periodic_timer_work`` sends ``VIRQ_TIMER`` when a
  period has passed since the last event and re-arms itself a period after *now* (late ticks are not
  made up). Xen stops it when the vCPU is descheduled (blocks) and runs the same work when the vCPU
  is scheduled again, so a vCPU that slept through some periods gets one event at wake-up — and a
  blocked vCPU is never woken by it;
* the **poll** timer (``SCHEDOP_poll``'s timeout): wakes a polling vCPU (``poll_timer_fn``).

Per domain: two **watchdog** timers (``SCHEDOP_watchdog``, ``NR_DOMAIN_WATCHDOG_TIMERS``) that shut
the domain down with ``SHUTDOWN_watchdog`` when they expire.

Per (emulated) CPU: the **calibration** timer (``EPOCH``, one second), at which Xen takes a new
(TSC, system time) stamp that the vCPU time records are extrapolated from
(``local_time_calibration``); it is Xen's own and never wakes the guest.

Deadlines are system times in nanoseconds; a timer set in the past fires at the next point where
Xen looks (a slice boundary, the exit of a hypercall), as ``set_timer`` with a past expiry does.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from xendbg.machine.clock.runstate import Runstate

NR_DOMAIN_WATCHDOG_TIMERS = 2
MILLISECS = 1_000_000
DEFAULT_PERIOD_NS = 10 * MILLISECS            # PV guests by default have a 100 Hz ticker
STIME_DELTA_MAX = (1 << 63) - 1

# When two timers expire at the same time they fire in this order: the calibration first (the
# records published by the others then carry the new stamp), the domain's watchdogs last.
FIRE_ORDER = {"calibration": 0, "singleshot": 1, "periodic": 2, "poll": 3, "watchdog": 4}


@dataclass
class Timer:
    kind: str                        # "singleshot", "periodic", "poll", "watchdog", "calibration"
    vcpu: int | None = None          # the vCPU it belongs to; None for domain and Xen timers
    deadline: int | None = None      # system time (ns) at which it fires; None: not armed
    period: int = 0                  # periodic: its period (0: off)
    last_event: int = 0              # periodic: when it last sent an event
    index: int = 0                   # watchdog: its slot
    fired: int = 0                   # how many times it expired

    @property
    def armed(self) -> bool:
        return self.deadline is not None

    @property
    def name(self) -> str:
        if self.vcpu is not None:
            return f"vcpu{self.vcpu}.{self.kind}"
        return f"{self.kind}{self.index}" if self.kind == "watchdog" else self.kind

    def sort_key(self) -> tuple[int, int, int, int]:
        return (self.deadline if self.deadline is not None else 1 << 64,
                FIRE_ORDER[self.kind], self.vcpu or 0, self.index)

    def __str__(self) -> str:
        when = "stopped" if self.deadline is None else f"at {self.deadline} ns"
        extra = f", period {self.period} ns" if self.period else ""
        return f"{self.name}: {when}{extra}, fired {self.fired}"


@dataclass
class VcpuTime:
    """What the clock keeps for one vCPU."""

    vcpu_id: int
    singleshot: Timer
    periodic: Timer
    poll: Timer
    runstate: Runstate = field(default_factory=Runstate)
    runstate_area: int | None = None       # guest VA given to register_runstate_memory_area
    time_area: int | None = None           # guest VA given to register_vcpu_time_memory_area
    vcpu_info_mfn: int | None = None       # frame given to register_vcpu_info (once only)
    polling: tuple[int, ...] | None = None  # SCHEDOP_poll: the ports it waits for
    running: bool = True                   # False while blocked (descheduled)

    @classmethod
    def new(cls, vcpu_id: int, online: bool) -> VcpuTime:
        periodic = Timer("periodic", vcpu_id, period=DEFAULT_PERIOD_NS)
        return cls(vcpu_id, Timer("singleshot", vcpu_id), periodic, Timer("poll", vcpu_id),
                   running=online)

    def timers(self) -> tuple[Timer, Timer, Timer]:
        return self.singleshot, self.periodic, self.poll

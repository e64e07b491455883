"""Virtual time (issue #5): the TSC, the pvclock records, the wallclock, timers, runstate, blocking.

Time in xendbg is virtual and deterministic: it is made of executed guest instructions, never of
the host's clock, so two runs of a guest with the same input see the same times to the tick.

* **The TSC.** ``tsc = insns * tsc_per_insn + idle_tsc``. ``insns`` is the block counter's exact
  count of executed instructions (``fast/_blockhook_c.pyx``); ``tsc_per_insn`` ticks per instruction
  at ``tsc_khz`` make the instruction-rate assumption: the defaults (2 ticks at 2 GHz) say that the
  guest runs one instruction per nanosecond, a 1 GHz CPU that does one instruction per cycle.
  ``idle_tsc`` is the time the vCPU spent blocked: a blocked vCPU does not execute, so the clock
  jumps over the wait by adding to this offset (the instruction count stays the count of what really
  executed). ``rdtsc``/``rdtscp`` read :meth:`Clock.tsc`. A read inside a block returns the count at
  the end of that block (the block counter adds a whole block when it starts): still monotonic.
* **System time** (Xen's ``NOW()``, ns since the machine started) is extrapolated from the last
  calibration stamp ``(stamp_tsc, stamp_ns)`` with the TSC's scale, exactly as
  ``get_s_time_fixed`` does; every ``epoch_ns`` (Xen's one-second ``EPOCH``) the calibration timer
  takes a new stamp. The vCPU time records publish the stamp itself (``collect_time_info``), so the
  time a guest computes with the pvclock formula is, to the nanosecond, Xen's ``NOW()``.
* **pvclock** records (``time_info``) are written when the domain starts (forced), at every
  calibration, when a timer fires and when the vCPU blocks or is woken (not forced: Xen writes only a
  record that changed). The wallclock says ``wallclock_ns`` (a fixed date by default, so that runs
  repeat) at system time 0.
* **Timers** (``timer``) fire at slice boundaries — the machine sets the block counter's budget to
  :meth:`Clock.next_deadline` and calls :meth:`Clock.at_slice_boundary` when it is reached — and on
  the way out of a hypercall (:meth:`Clock.check_timers`). Arming a timer from a hypercall also
  lowers the running slice's budget, so it fires on time.
* **Blocking** (:meth:`Clock.block`, for ``SCHEDOP_block``, ``SCHEDOP_poll`` and ``hlt``): the vCPU
  is descheduled (runstate blocked, periodic timer stopped), virtual time fast-forwards from deadline
  to deadline, firing what expires, until something wakes the vCPU; with nothing left that could,
  it returns False and the machine stops with "blocked".

The configuration is a :class:`ClockConfig`: ``machine.config.clock`` (``BuildConfig.clock``;
``xendbg run --tsc-khz --start-date``), else the defaults; :meth:`Clock.configure` replaces it
before the guest has run.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone

from xendbg.fast.pvclock import TscHook, scale_delta, set_time_scale, tsc_for_ns
from xendbg.machine.abi import xen as X
from xendbg.machine.abi.errno import EINVAL, ENOSPC
from xendbg.machine.abi.layout import XEN_PVCLOCK_TSC_STABLE_BIT
from xendbg.machine.clock.runstate import (
    Runstate,
    RUNSTATE_blocked,
    RUNSTATE_runnable,
    RUNSTATE_running,
    update_runstate_area,
)
from xendbg.machine.clock.time_info import (
    TimeRecord,
    write_secondary,
    write_time_info,
    write_wallclock,
)
from xendbg.machine.clock.timer import (
    MILLISECS,
    NR_DOMAIN_WATCHDOG_TIMERS,
    Timer,
    VcpuTime,
)
from xendbg.machine.memory import PAGE_SHIFT

NSEC_PER_SEC = 1_000_000_000
MASK64 = (1 << 64) - 1
DEFAULT_START = datetime(2026, 1, 1, tzinfo=timezone.utc)

__all__ = ["Clock", "ClockConfig", "Timer", "Runstate", "DEFAULT_START", "parse_start_date",
           "ticks_per_insn"]


@dataclass(frozen=True)
class ClockConfig:
    """How virtual time runs. ``wallclock_ns``: the wall time (ns since the Unix epoch) when the
    machine starts; ``epoch_ns``: the calibration period."""

    tsc_khz: int = 2_000_000
    tsc_per_insn: int = 2
    wallclock_ns: int = int(DEFAULT_START.timestamp()) * NSEC_PER_SEC
    epoch_ns: int = NSEC_PER_SEC

    def __post_init__(self) -> None:
        if not 0 < self.tsc_khz <= MASK64 // 1000:
            raise ValueError(f"tsc_khz {self.tsc_khz} out of range")
        if not 1 <= self.tsc_per_insn <= 1 << 20:
            raise ValueError(f"tsc_per_insn {self.tsc_per_insn} out of range")
        if not 0 <= self.wallclock_ns < 1 << 94:
            raise ValueError(f"wallclock_ns {self.wallclock_ns} out of range")
        if not MILLISECS <= self.epoch_ns <= 3600 * NSEC_PER_SEC:
            raise ValueError(f"epoch_ns {self.epoch_ns} out of range")

    @classmethod
    def starting_at(cls, when: str | datetime, **kw) -> ClockConfig:
        """A configuration whose wallclock starts at ``when`` (an ISO 8601 date; UTC if it names
        no zone), e.g. ``ClockConfig.starting_at("2030-06-01T12:00:00Z")``."""
        return cls(wallclock_ns=parse_start_date(when), **kw)

    @classmethod
    def from_options(cls, tsc_khz: int | None = None,
                     start_date: str | datetime | None = None) -> ClockConfig:
        """What ``xendbg run --tsc-khz --start-date`` ask for (None: the default). Another TSC
        frequency keeps the guest at about one instruction per virtual nanosecond
        (:func:`ticks_per_insn`). ValueError with a one-line reason for a bad value."""
        kw: dict[str, int] = {}
        if tsc_khz is not None:
            kw["tsc_khz"] = tsc_khz
            kw["tsc_per_insn"] = ticks_per_insn(tsc_khz)
        if start_date is not None:
            kw["wallclock_ns"] = parse_start_date(start_date)
        return cls(**kw)


def ticks_per_insn(tsc_khz: int) -> int:
    """TSC ticks per executed instruction at ``tsc_khz``: the frequency in GHz, rounded, at least
    1 — one instruction per virtual nanosecond, as the default (2 ticks at 2 GHz) assumes."""
    if tsc_khz <= 0:
        raise ValueError(f"a TSC frequency must be positive, not {tsc_khz} kHz")
    return max(1, (tsc_khz + 500_000) // 1_000_000)


def parse_start_date(when: str | datetime) -> int:
    """ns since the Unix epoch of an ISO 8601 date or date/time (UTC unless it names a zone:
    ``2030-06-01``, ``2030-06-01T12:00:00Z``, ``2030-06-01 12:00:00.25+02:00``). ValueError with
    a one-line reason for anything else, or a date before 1970."""
    if isinstance(when, str):
        try:
            when = datetime.fromisoformat(when.strip())
        except ValueError:
            raise ValueError(f"{when!r} is not an ISO 8601 date or date/time (for example "
                             "2030-06-01 or 2030-06-01T12:00:00Z)") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    delta = when - datetime(1970, 1, 1, tzinfo=timezone.utc)
    ns = (delta.days * 86400 + delta.seconds) * NSEC_PER_SEC + delta.microseconds * 1000
    if ns < 0:
        raise ValueError(f"{when.isoformat()} is before 1970: Xen's wallclock counts from the "
                         "Unix epoch")
    return ns


class Clock:
    """The machine's virtual time (see the module docstring)."""

    def __init__(self, machine, config: ClockConfig | None = None) -> None:
        self.m = machine
        self._tsc_hook: TscHook | None = None
        self._idle_tsc = 0
        self._setup(config or getattr(machine.config, "clock", None) or ClockConfig())

    def hook_rdtsc(self, cpu) -> None:
        """Answer the guest's ``rdtsc``/``rdtscp`` with :meth:`tsc` (a compiled hook if built)."""
        if self._tsc_hook is None:
            self._tsc_hook = TscHook(cpu.uc, self.m, self.m.is64)
            self._tsc_hook.install()
        self._tsc_hook.per_insn = self.tsc_per_insn
        self._tsc_hook.idle_tsc = self._idle_tsc

    @property
    def idle_tsc(self) -> int:
        """TSC ticks spent blocked (added to the instruction count's)."""
        return self._idle_tsc

    @idle_tsc.setter
    def idle_tsc(self, value: int) -> None:
        self._idle_tsc = value
        self._due_valid = False          # the cached instruction counts assume the old offset
        if self._tsc_hook is not None:
            self._tsc_hook.idle_tsc = value

    def _setup(self, config: ClockConfig) -> None:
        self.config = config
        self.tsc_hz = config.tsc_khz * 1000
        self.tsc_per_insn = config.tsc_per_insn
        self.mul_frac, self.shift = set_time_scale(self.tsc_hz)
        self.idle_tsc = 0
        if self._tsc_hook is not None:
            self._tsc_hook.per_insn = self.tsc_per_insn
        self.stamp_tsc = self.tsc()
        self.stamp_ns = 0
        self.vcpus = {v.vcpu_id: VcpuTime.new(v.vcpu_id, v.online) for v in self.m.domain.vcpus}
        self.watchdogs = [Timer("watchdog", index=i) for i in range(NR_DOMAIN_WATCHDOG_TIMERS)]
        self.calibration = Timer("calibration", deadline=config.epoch_ns)
        for vt in self.vcpus.values():
            if vt.running:
                # The vCPU is created offline and scheduled when the toolstack unpauses the
                # domain: running from system time 0, its 100 Hz ticker first due a period later.
                vt.runstate = Runstate(RUNSTATE_running, 0)
                vt.periodic.deadline = vt.periodic.last_event + vt.periodic.period
        self._due: int | None = None           # cached next_deadline()
        self._earliest_ns: int | None = None   # and the deadline (ns) it is for
        # check_timers' shortcut: while ``_quiet_lo <= insns < _quiet_hi`` no armed timer is due.
        self._quiet_lo = self._quiet_hi = 0
        self._due_valid = False
        wc_sec, wc_nsec = divmod(config.wallclock_ns, NSEC_PER_SEC)
        write_wallclock(self.m.memory.view, self.m.domain.shared_info_mfn << PAGE_SHIFT,
                        self.m.abi, wc_sec, wc_nsec)
        for v in self.m.domain.vcpus:
            self.update_vcpu_system_time(v, force=True)

    def configure(self, config: ClockConfig) -> None:
        """Replace the configuration; only before the guest has executed anything."""
        if self.m.counter.insns or self.idle_tsc:
            raise RuntimeError("the clock can only be configured before the guest runs")
        self._setup(config)

    # -- time --------------------------------------------------------------------------------------
    def tsc(self) -> int:
        """The virtual TSC (what ``rdtsc`` returns)."""
        return self.m.counter.insns * self.tsc_per_insn + self._idle_tsc

    def now_ns(self, tsc: int | None = None) -> int:
        """Xen's ``NOW()``: system time in ns, from the last calibration stamp."""
        tsc = self.tsc() if tsc is None else tsc
        return self.stamp_ns + scale_delta((tsc - self.stamp_tsc) & MASK64, self.mul_frac,
                                           self.shift)

    def tsc_at(self, ns: int) -> int | None:
        """The first TSC value at which ``NOW()`` reaches ``ns`` (None: never, with this stamp)."""
        if ns <= self.stamp_ns:
            return self.stamp_tsc
        if ns - self.stamp_ns > MASK64:
            return None
        delta = tsc_for_ns(ns - self.stamp_ns, self.mul_frac, self.shift)
        return None if delta is None else self.stamp_tsc + delta

    def wallclock_ns(self) -> int:
        """Wall time now (ns since the Unix epoch), as the guest computes it."""
        return self.config.wallclock_ns + self.now_ns()

    def time_record(self) -> TimeRecord:
        """``collect_time_info``: the stamp, the scale, and TSC_STABLE (the TSC is the clock)."""
        return TimeRecord(self.stamp_tsc, self.stamp_ns, self.mul_frac, self.shift,
                          XEN_PVCLOCK_TSC_STABLE_BIT)

    # -- what the machine's run loop asks --------------------------------------------------------
    def _all_timers(self) -> list[Timer]:
        timers = [self.calibration, *self.watchdogs]
        for vt in self.vcpus.values():
            timers.extend(vt.timers())
        return timers

    def _invalidate(self) -> None:
        self._due_valid = False

    def _earliest(self) -> int | None:
        """The earliest armed deadline (ns), cached until a timer, the stamp or idle time moves."""
        if not self._due_valid:
            armed = [t.deadline for t in self._all_timers() if t.deadline is not None]
            self._earliest_ns = min(armed) if armed else None
            self._due = None
            # No timer: never due (the counter is a uint64). Not reachable in this stamp's range:
            # an empty range, so that check_timers asks now_ns() as before.
            self._quiet_lo, self._quiet_hi = (0, 1 << 64) if not armed else (0, 0)
            if self._earliest_ns is not None:
                tsc = self.tsc_at(self._earliest_ns)
                if tsc is not None:
                    insns = -(-max(tsc - self._idle_tsc, 0) // self.tsc_per_insn)   # ceil
                    self._due = max(insns, 1)      # 0 would mean "no budget" to the counter
                    self._quiet_range(tsc)
            self._due_valid = True
        return self._earliest_ns

    def _quiet_range(self, due_tsc: int) -> None:
        """The instruction counts for which ``NOW()`` is below the earliest deadline.

        ``tsc_at`` is the first TSC at which ``NOW()`` reaches the deadline, and ``NOW()`` only
        grows with the TSC from the stamp up to there, so every TSC in ``[stamp_tsc, due_tsc)`` is
        before the deadline. In instructions (``tsc = insns * per_insn + idle``; ceilings, exact
        for negative numerators too): ``lo <= insns < hi``. Below the stamp (the counter set back)
        the range does not apply and check_timers computes ``NOW()``.
        """
        per, idle = self.tsc_per_insn, self._idle_tsc
        self._quiet_lo = -((idle - self.stamp_tsc) // per)
        self._quiet_hi = -((idle - due_tsc) // per)

    def next_deadline(self) -> int | None:
        """The instruction count at which the earliest armed timer is due, or None."""
        self._earliest()
        return self._due

    def at_slice_boundary(self) -> None:
        """The budget ran out at a deadline: fire what expired."""
        self.fire_due()

    def check_timers(self) -> None:
        """On the way out of a hypercall (Xen's softirq check): fire timers that are due.

        Nearly always nothing is: one comparison of the instruction count with the cached range
        in which nothing can be (:meth:`_quiet_range`) answers that without computing ``NOW()``.
        """
        if self._due_valid and self._quiet_lo <= self.m.counter.insns < self._quiet_hi:
            return
        earliest = self._earliest()
        if earliest is not None and earliest <= self.now_ns():
            self.fire_due()

    def _lower_budget(self) -> None:
        """A timer was armed (or time jumped) inside the running slice: make the slice end no
        later than the new first deadline. Only ever lowers: an early end costs a boundary."""
        due = self.next_deadline()
        counter = self.m.counter
        if due is not None and (not counter.budget or due < counter.budget):
            counter.budget = due

    # -- firing ----------------------------------------------------------------------------------
    def fire_due(self) -> None:
        """Fire every armed timer whose deadline has passed, earliest first."""
        while not self.m.domain.dying:
            now = self.now_ns()
            due = [t for t in self._all_timers() if t.deadline is not None and t.deadline <= now]
            if not due:
                break
            self._fire(min(due, key=Timer.sort_key), now)
        self._invalidate()
        self._lower_budget()

    def _fire(self, t: Timer, now: int) -> None:
        t.fired += 1
        deadline, t.deadline = t.deadline, None
        self._invalidate()
        self.m.emit("timer", timer=t.name, deadline=deadline, now=now)
        if t.kind == "calibration":
            self._calibrate(now)
        elif t.kind == "singleshot":
            self.send_timer_event(t.vcpu)
        elif t.kind == "periodic":
            self._periodic_work(self.vcpus[t.vcpu], now)
        elif t.kind == "poll":
            vt = self.vcpus[t.vcpu]
            if vt.polling is not None:                  # poll_timer_fn: wake the poller
                vt.polling = None
                self.m.domain.vcpus[t.vcpu].blocked = False
        elif t.kind == "watchdog":
            self.m.shutdown(X.SHUTDOWN_watchdog)

    def _calibrate(self, now: int) -> None:
        """``local_time_calibration`` with a constant TSC: a new stamp, the records follow."""
        self.stamp_tsc, self.stamp_ns = self.tsc(), now
        self._invalidate()                       # the cached deadlines were for the old stamp
        self.calibration.deadline = now + self.config.epoch_ns
        for v in self.m.domain.vcpus:
            if self.vcpus[v.vcpu_id].running:
                self.update_vcpu_system_time(v)

    def _periodic_work(self, vt: VcpuTime, now: int) -> None:
        """``vcpu_periodic_timer_work``: an event if a period has passed, then re-arm."""
        p = vt.periodic
        if p.period == 0:
            return
        following = p.last_event + p.period
        if now >= following:
            self.send_timer_event(vt.vcpu_id)
            p.last_event = now
            following = now + p.period
        p.deadline = following
        self._invalidate()

    def send_timer_event(self, vcpu_id: int) -> None:
        """``send_timer_event``: raise ``VIRQ_TIMER`` on the vCPU (nothing if it is not bound)."""
        self.m.evtchn.raise_virq(X.VIRQ_TIMER, vcpu_id)
        self.update_vcpu_system_time(self.m.domain.vcpus[vcpu_id])

    # -- timer operations (the hypercalls) -------------------------------------------------------
    def set_singleshot(self, vcpu_id: int, deadline: int) -> None:
        """``set_timer`` on the single-shot timer; a deadline already past fires on the way out."""
        self.vcpus[vcpu_id].singleshot.deadline = deadline
        self._invalidate()
        self._lower_budget()

    def stop_singleshot(self, vcpu_id: int) -> None:
        self.vcpus[vcpu_id].singleshot.deadline = None
        self._invalidate()

    def set_periodic(self, vcpu_id: int, period: int) -> None:
        """``vcpu_set_periodic_timer``: a new period restarts the timer from now (0 stops it);
        the same period again changes nothing."""
        p = self.vcpus[vcpu_id].periodic
        if p.period == period:
            return
        p.deadline = None
        p.period = period
        if period:
            now = self.now_ns()
            p.last_event = now
            if self.vcpus[vcpu_id].running:
                p.deadline = now + period
        self._invalidate()
        self._lower_budget()

    def domain_watchdog(self, wid: int, timeout_s: int) -> int:
        """``domain_watchdog``: id 0 takes a free slot (returns its id, 1-based), another id
        re-arms that slot, or frees it when ``timeout_s`` is 0."""
        if wid > NR_DOMAIN_WATCHDOG_TIMERS:
            return -EINVAL
        now = self.now_ns()
        if wid == 0:
            for t in self.watchdogs:
                if not t.armed:
                    t.deadline = now + timeout_s * NSEC_PER_SEC
                    self._invalidate()
                    self._lower_budget()
                    return t.index + 1
            return -ENOSPC
        t = self.watchdogs[wid - 1]
        if not t.armed:
            return -EINVAL
        t.deadline = None if timeout_s == 0 else now + timeout_s * NSEC_PER_SEC
        self._invalidate()
        self._lower_budget()
        return 0

    # -- blocking --------------------------------------------------------------------------------
    def block(self, vcpu, ports: tuple[int, ...] | list[int] | None = None,
              timeout: int = 0) -> bool:
        """The vCPU blocks (``SCHEDOP_block``, ``hlt``) or polls ``ports`` (``SCHEDOP_poll``, with
        an absolute ``timeout`` in ns, 0 for none); nothing was pending when it was called.

        Deschedules it, then fast-forwards virtual time to each next deadline in turn, firing what
        expires, until the vCPU is woken (an event made an upcall pending, a polled port became
        pending, the poll timed out) or the domain died. Returns False, leaving it blocked, when no
        timer is left that could wake it.
        """
        vt = self.vcpus[vcpu.vcpu_id]
        vcpu.blocked = True
        self._deschedule(vt)
        if ports is not None:
            vt.polling = tuple(ports)
            if timeout:
                vt.poll.deadline = timeout - (1 << 64) if timeout >> 63 else timeout
        self._invalidate()
        while not self._woken(vcpu, vt):
            if self.m.domain.dying:
                return True
            waking = [t.deadline for t in (*self.watchdogs, *vt.timers())
                      if t.deadline is not None]
            if not waking or not self._fast_forward(min(waking)):
                vt.polling = None               # nothing left to wake it, or not in 2**64 ticks
                vt.poll.deadline = None
                self._invalidate()
                return False
            self.fire_due()
        vt.polling = None
        vt.poll.deadline = None
        vcpu.blocked = False
        self._schedule(vcpu, vt)
        return True

    def _woken(self, vcpu, vt: VcpuTime) -> bool:
        if not vcpu.blocked:
            return True
        if vt.polling is not None:
            delivery = self.m.evtchn.delivery
            return any(delivery.is_pending(p) for p in vt.polling)
        return False

    def _fast_forward(self, ns: int) -> bool:
        """Idle until ``NOW()`` reaches ``ns``; False if the TSC cannot get there.

        The calibrations on the way take their stamps as they expire. While no vCPU runs nobody
        sees a stamp but the last, so a long wait goes straight to the last calibration before
        ``ns`` instead of through every epoch.
        """
        epoch = self.config.epoch_ns
        while True:
            cal = self.calibration.deadline
            if cal is None or cal > ns:
                return self._idle_until(ns)
            skipped = (ns - cal) // epoch
            if skipped and not any(vt.running for vt in self.vcpus.values()):
                self.calibration.deadline = cal + skipped * epoch
                self.calibration.fired += skipped
            if not self._idle_until(self.calibration.deadline):
                return False
            self.fire_due()                      # the calibration (and whatever else is due)
            if self.m.domain.dying:
                return True

    def _idle_until(self, ns: int) -> bool:
        tsc = self.tsc_at(ns)
        if tsc is None or tsc > MASK64:
            return False                         # beyond what a 64-bit TSC can count to
        now = self.tsc()
        if tsc > now:
            self.idle_tsc += tsc - now
            self._invalidate()
        return True

    def _deschedule(self, vt: VcpuTime) -> None:
        """The vCPU stops running: runstate blocked, periodic timer stopped, area updated."""
        if not vt.running:
            return
        now = self.now_ns()
        vt.running = False
        vt.runstate.change(RUNSTATE_blocked, now)
        vt.periodic.deadline = None
        self.update_runstate_area(vt.vcpu_id)
        self._invalidate()

    def _schedule(self, vcpu, vt: VcpuTime) -> None:
        """Woken and scheduled: runnable then running now, fresh time record, periodic work."""
        now = self.now_ns()
        vt.runstate.change(RUNSTATE_runnable, now)
        vt.runstate.change(RUNSTATE_running, now)
        vt.running = True
        self.update_vcpu_system_time(vcpu)
        self._periodic_work(vt, now)
        self.update_runstate_area(vt.vcpu_id)
        self._invalidate()
        self._lower_budget()

    # -- publishing ------------------------------------------------------------------------------
    def _kernel_cr3(self, vcpu) -> int | None:
        return vcpu.guest_table << PAGE_SHIFT if vcpu.guest_table else None

    def update_vcpu_system_time(self, vcpu, force: bool = False) -> bool:
        """Publish the time record in ``vcpu``'s ``vcpu_info`` (and its secondary area); False
        when the record had not changed and nothing was written."""
        record = self.time_record()
        ma = vcpu.vcpu_info_ma + self.m.abi.vcpu_time
        odd = write_time_info(self.m.memory.view, ma, record, force)
        if odd is None:
            return False
        vt = self.vcpus[vcpu.vcpu_id]
        if vt.time_area is not None:
            write_secondary(self.m.guest, vt.time_area, record, odd, self._kernel_cr3(vcpu))
        return True

    def runstate_info(self, vcpu_id: int) -> Runstate:
        """``vcpu_runstate_get``: the runstate with the current state charged up to now."""
        return self.vcpus[vcpu_id].runstate.get(self.now_ns())

    def update_runstate_area(self, vcpu_id: int) -> bool:
        """``update_runstate_area``: copy the runstate to the guest's registered area."""
        vt = self.vcpus[vcpu_id]
        if vt.runstate_area is None:
            return True
        vcpu = self.m.domain.vcpus[vcpu_id]
        flag = bool(self.m.domain.vm_assist & (1 << X.VMASST_TYPE_runstate_update_flag))
        return update_runstate_area(self.m.guest, vt.runstate_area, vt.runstate,
                                    self.m.abi.bits, flag, self._kernel_cr3(vcpu))

    def register_runstate_area(self, vcpu_id: int, va: int) -> None:
        """Remember the area (0 unregisters it) and copy the runstate there once."""
        vt = self.vcpus[vcpu_id]
        vt.runstate_area = va or None
        if vt.runstate_area is not None:
            self.update_runstate_area(vcpu_id)

    def register_time_area(self, vcpu_id: int, va: int) -> None:
        """Remember the secondary time area (0 unregisters it), then a forced update."""
        vt = self.vcpus[vcpu_id]
        vt.time_area = va or None
        self.update_vcpu_system_time(self.m.domain.vcpus[vcpu_id], force=True)

    # -- inspection ------------------------------------------------------------------------------
    @property
    def timers(self) -> dict[str, Timer]:
        """Every timer by name (armed or not), for the debugger."""
        return {t.name: t for t in self._all_timers()}

    def pending_timers(self) -> list[Timer]:
        """The armed timers, earliest first."""
        return sorted((t for t in self._all_timers() if t.armed), key=Timer.sort_key)



"""What must hold after every hypercall, whatever the guest passed.

* **No escape.** A Python exception inside a hook is turned by the machine into a domain crash
  "xendbg internal error …" and kept in ``m.internal_errors``: each new entry is an escape. So is an
  exception that comes out of ``Machine.run`` itself.
* **The domain is alive, or ended with a reason**: a crash has a non-empty reason, a shutdown a
  name, and the run stopped for one of the documented reasons.
* **Event channels are consistent**: every open port is in a real state and in range; a VIRQ port
  is the one registered for its (virq, vcpu); a loop-back interdomain port's peer points back at it;
  a backend port names a connected backend. Xen never marks a closed port pending (checked where it
  happens, by watching the 2-level ``set_pending``), and closing a port clears its pending bit.
* **The MMU invariants** (``xendbg.machine.mmu.invariants.check(m)``), once that module exists.
"""

from __future__ import annotations

import traceback
from dataclasses import dataclass

from xendbg.machine.abi import xen as X

RUN_REASONS = frozenset({"fuzz", "budget", "crash", "shutdown", "blocked", "stop"})
EVTCHN_STATES = frozenset({X.EVTCHNSTAT_unbound, X.EVTCHNSTAT_interdomain, X.EVTCHNSTAT_pirq,
                           X.EVTCHNSTAT_virq, X.EVTCHNSTAT_ipi})


@dataclass
class Violation:
    kind: str            # escape | life | evtchn | mmu | checker
    message: str
    detail: str = ""     # a traceback, when there is one


def _mmu_checker():
    try:
        from xendbg.machine.mmu import invariants
    except ImportError:
        return None
    return getattr(invariants, "check", None)


class Invariants:
    """The checks for one machine; :meth:`before` each call, :meth:`after` it."""

    def __init__(self, m) -> None:
        self.m = m
        self.mmu_check = _mmu_checker()
        self.raised_closed: list[int] = []
        self._open: frozenset[int] = frozenset()
        self._internal = 0
        self._watch_set_pending()
        # The MMU checker reports what a call made worse: what a fresh domain already violates is
        # the builder's business (and in the fuzzer's summary), not the call's.
        self._mmu_known: set[str] = set()
        if self.mmu_check is not None:
            self._mmu_known = {v.message for v in self._mmu() if v.kind == "mmu"}

    def _watch_set_pending(self) -> None:
        m = self.m
        delivery = m.evtchn.delivery
        original = getattr(delivery, "set_pending", None)
        self.watching = original is not None
        if original is None:
            return

        def set_pending(port, *args, **kwargs):
            chan = m.evtchn.ports.get(port)
            if chan is None or chan.state == X.EVTCHNSTAT_closed:
                self.raised_closed.append(port)
            return original(port, *args, **kwargs)

        delivery.set_pending = set_pending      # an instance attribute: only this machine

    def before(self) -> None:
        self._open = frozenset(self.m.evtchn.ports)
        self._internal = len(self.m.internal_errors)
        self.raised_closed.clear()

    def after(self, reason: str | None, mmu: bool = True) -> list[Violation]:
        out: list[Violation] = []
        m = self.m
        for tb in m.internal_errors[self._internal:]:
            out.append(Violation("escape", tb.strip().splitlines()[-1], tb))
        d = m.domain
        if d.crashed is not None and not (isinstance(d.crashed, str) and d.crashed.strip()):
            out.append(Violation("life", f"domain crashed without a reason ({d.crashed!r})"))
        if d.shutdown is not None and not getattr(d.shutdown, "name", ""):
            out.append(Violation("life", f"domain shut down without a reason ({d.shutdown!r})"))
        if reason is not None and reason not in RUN_REASONS:
            out.append(Violation("life", f"the run stopped for an unexpected reason {reason!r}"))
        if reason == "crash" and d.crashed is None:
            out.append(Violation("life", "the run stopped with 'crash' but the domain is not crashed"))
        try:
            out += self._evtchn()
        except Exception:                          # noqa: BLE001 - a checker bug is reported too
            out.append(Violation("checker", "the event-channel check failed",
                                 traceback.format_exc()))
        if mmu and self.mmu_check is not None:
            found = self._mmu()
            now = {v.message for v in found if v.kind == "mmu"}
            out += [v for v in found if v.kind != "mmu" or v.message not in self._mmu_known]
            self._mmu_known = now
        return out

    def _evtchn(self) -> list[Violation]:
        ev = self.m.evtchn
        out = []
        nr = ev.nr_ports
        # The VIRQ table's key order is the event-channel module's business; only its values count.
        virq_bound = list(ev.virq_ports.values())
        for port in {p for p in virq_bound if virq_bound.count(p) > 1}:
            out.append(Violation("evtchn", f"port {port} is registered for more than one VIRQ"))
        for port, chan in ev.ports.items():
            where = f"port {port}"
            if chan.port != port:
                out.append(Violation("evtchn", f"{where}: recorded as port {chan.port}"))
            if not 0 < port < nr:
                out.append(Violation("evtchn", f"{where}: out of range (1..{nr - 1})"))
            if chan.state not in EVTCHN_STATES:
                out.append(Violation("evtchn", f"{where}: open in state {chan.state}"))
            if not 0 <= chan.vcpu < len(self.m.domain.vcpus):
                out.append(Violation("evtchn", f"{where}: bound to vCPU {chan.vcpu}"))
            if chan.state == X.EVTCHNSTAT_virq and port not in virq_bound:
                out.append(Violation("evtchn", f"{where}: VIRQ {chan.virq} not registered to it"))
            if chan.state == X.EVTCHNSTAT_interdomain:
                if chan.backend is not None:
                    end = ev.backends.get(chan.backend)
                    if end is None:
                        out.append(Violation("evtchn", f"{where}: unknown backend {chan.backend}"))
                    elif getattr(end, "local_port", port) != port:
                        out.append(Violation("evtchn", f"{where}: backend {chan.backend} is "
                                                       f"connected to port {end.local_port}"))
                else:
                    peer = ev.ports.get(chan.remote_port)
                    if peer is None or peer.state != X.EVTCHNSTAT_interdomain or \
                            peer.remote_port != port:
                        out.append(Violation("evtchn", f"{where}: interdomain peer "
                                                       f"{chan.remote_port} does not point back"))
        for key, port in ev.virq_ports.items():
            chan = ev.ports.get(port)
            if chan is None or chan.state != X.EVTCHNSTAT_virq or chan.virq not in key:
                out.append(Violation("evtchn", f"VIRQ table entry {key} names port {port}, "
                                               "which is not bound to that VIRQ"))
        for port in sorted(set(self.raised_closed)):
            out.append(Violation("evtchn", f"Xen marked closed port {port} pending"))
        closed_now = self._open - set(ev.ports)
        if closed_now:
            pending = set(ev.delivery.pending_ports())
            for port in sorted(closed_now & pending):
                out.append(Violation("evtchn", f"port {port} was closed but is still pending"))
        return out

    def _mmu(self) -> list[Violation]:
        try:
            result = self.mmu_check(self.m)
        except AssertionError as exc:
            return [Violation("mmu", str(exc) or "MMU invariant violated", traceback.format_exc())]
        except Exception:                          # noqa: BLE001
            return [Violation("checker", "the MMU invariant checker raised",
                              traceback.format_exc())]
        if not result or result is True:
            return []
        if isinstance(result, str):
            return [Violation("mmu", result)]
        return [Violation("mmu", str(problem)) for problem in result]

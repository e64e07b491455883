"""Event-channel ports and the ``event_channel_op`` hypercall (Xen's ``common/event_channel.c``).

A port is in one state — closed, unbound (waiting for a named remote domain), interdomain (connected
to a port of another domain), virq, ipi or pirq — and is notified on one vCPU. xendbg's "other
domain" is the set of in-process backends (console, xenstore): an interdomain port whose remote end
is a backend calls that backend when the guest sends on it.

Delivery is the 2-level ABI behind :class:`~xendbg.machine.events.evtchn_2l.Evtchn2L`; the FIFO
ABI is not offered (``init_control`` fails with ``-ENOSYS``, which makes guests fall back).
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass

from xendbg.machine.abi import xen as X
from xendbg.machine.abi.errno import EEXIST, EFAULT, EINVAL, ENOENT, ENOSPC, ENOSYS, EPERM, ESRCH
from xendbg.machine.events.evtchn_2l import Evtchn2L

BACKEND_DOMID = 0

STATE_NAMES = {X.EVTCHNSTAT_closed: "closed", X.EVTCHNSTAT_unbound: "unbound",
               X.EVTCHNSTAT_interdomain: "interdomain", X.EVTCHNSTAT_pirq: "pirq",
               X.EVTCHNSTAT_virq: "virq", X.EVTCHNSTAT_ipi: "ipi"}


@dataclass
class Port:
    port: int
    state: int = X.EVTCHNSTAT_closed
    vcpu: int = 0
    remote_dom: int = 0
    remote_port: int = 0
    virq: int = 0
    backend: str | None = None       # name of the in-process backend at the other end
    sends: int = 0                   # times the guest sent on it
    raised: int = 0                  # times Xen raised it towards the guest


class EventChannels:
    """One domain's ports."""

    def __init__(self, machine, delivery: Evtchn2L) -> None:
        self.machine = machine
        self.delivery = delivery
        self.nr_ports = delivery.nr_ports
        self.ports: dict[int, Port] = {}
        self.backends: dict[str, Callable[[int], None]] = {}
        self.virq_ports: dict[tuple[int, int], int] = {}     # (virq, vcpu) → port

    # -- set-up by the toolstack ----------------------------------------------------------------
    def connect_backend(self, port: int, name: str, notify: Callable[[int], None]) -> None:
        """What xl + a backend daemon do: an interdomain port from the guest to ``name``."""
        self.backends[name] = notify
        self.ports[port] = Port(port, X.EVTCHNSTAT_interdomain, remote_dom=BACKEND_DOMID,
                                remote_port=port, backend=name)

    # -- raising ports towards the guest -----------------------------------------------------------
    def raise_port(self, port: int) -> None:
        """Xen's ``evtchn_port_set_pending``: mark ``port`` pending on its vCPU."""
        chan = self.ports.get(port)
        if chan is None or chan.state == X.EVTCHNSTAT_closed:
            return
        chan.raised += 1
        vcpu = self.machine.domain.vcpus[chan.vcpu]
        if self.delivery.set_pending(port, vcpu.vcpu_info_ma):
            self.machine.on_event_pending(vcpu, port)

    def raise_virq(self, virq: int, vcpu: int = 0) -> None:
        port = self.virq_ports.get((virq, vcpu))
        if port is not None:
            self.raise_port(port)

    def notify_backend_event(self, name: str) -> None:
        """A backend signals the guest on the port connected to it."""
        for chan in self.ports.values():
            if chan.backend == name and chan.state == X.EVTCHNSTAT_interdomain:
                self.raise_port(chan.port)

    # -- the hypercall ----------------------------------------------------------------------------
    def _free_port(self) -> int | None:
        for port in range(1, self.nr_ports):
            chan = self.ports.get(port)
            if chan is None or chan.state == X.EVTCHNSTAT_closed:
                return port
        return None

    def _valid(self, port: int) -> bool:
        return 0 < port < self.nr_ports and port in self.ports and \
            self.ports[port].state != X.EVTCHNSTAT_closed

    def op(self, cmd: int, read: Callable[[int], bytes | None],
           write: Callable[[int, bytes], bool]) -> int:
        """Run EVTCHNOP ``cmd``; ``read(n)``/``write(off, data)`` access the argument structure."""
        handler = _OPS.get(cmd)
        if handler is None:
            return -ENOSYS
        return handler(self, read, write)

    def _alloc_unbound(self, read, write) -> int:
        raw = read(8)
        if raw is None:
            return -EFAULT
        dom, remote_dom = struct.unpack_from("<HH", raw)
        if dom not in (X.DOMID_SELF, self.machine.domain.domid):
            return -EPERM
        if remote_dom == X.DOMID_SELF:
            remote_dom = self.machine.domain.domid
        port = self._free_port()
        if port is None:
            return -ENOSPC
        self.ports[port] = Port(port, X.EVTCHNSTAT_unbound, remote_dom=remote_dom)
        if not write(4, struct.pack("<I", port)):
            del self.ports[port]
            return -EFAULT
        return 0

    def _bind_interdomain(self, read, write) -> int:
        raw = read(12)
        if raw is None:
            return -EFAULT
        remote_dom, remote_port = struct.unpack_from("<H2xI", raw)
        domid = self.machine.domain.domid
        if remote_dom == X.DOMID_SELF:
            remote_dom = domid
        if remote_dom != domid:
            return -ESRCH          # no other guest domain exists to bind to
        remote = self.ports.get(remote_port)
        if remote is None or remote.state != X.EVTCHNSTAT_unbound or remote.remote_dom != domid:
            return -EINVAL
        port = self._free_port()
        if port is None:
            return -ENOSPC
        self.ports[port] = Port(port, X.EVTCHNSTAT_interdomain, remote_dom=domid,
                                remote_port=remote_port)
        remote.state = X.EVTCHNSTAT_interdomain
        remote.remote_port = port
        if not write(8, struct.pack("<I", port)):
            return -EFAULT
        return 0

    def _bind_virq(self, read, write) -> int:
        raw = read(12)
        if raw is None:
            return -EFAULT
        virq, vcpu = struct.unpack_from("<II", raw)
        if virq >= X.NR_VIRQS:
            return -EINVAL
        if vcpu >= len(self.machine.domain.vcpus):
            return -ENOENT
        if (virq, vcpu) in self.virq_ports:
            return -EEXIST
        port = self._free_port()
        if port is None:
            return -ENOSPC
        self.ports[port] = Port(port, X.EVTCHNSTAT_virq, vcpu=vcpu, virq=virq)
        self.virq_ports[(virq, vcpu)] = port
        if not write(8, struct.pack("<I", port)):
            return -EFAULT
        return 0

    def _bind_ipi(self, read, write) -> int:
        raw = read(8)
        if raw is None:
            return -EFAULT
        (vcpu,) = struct.unpack_from("<I", raw)
        if vcpu >= len(self.machine.domain.vcpus):
            return -ENOENT
        port = self._free_port()
        if port is None:
            return -ENOSPC
        self.ports[port] = Port(port, X.EVTCHNSTAT_ipi, vcpu=vcpu)
        if not write(4, struct.pack("<I", port)):
            return -EFAULT
        return 0

    def _bind_pirq(self, read, write) -> int:
        return -EPERM              # physical IRQs are for privileged domains

    def close_port(self, port: int) -> int:
        if not self._valid(port):
            return -EINVAL
        chan = self.ports[port]
        if chan.state == X.EVTCHNSTAT_virq:
            self.virq_ports.pop((chan.virq, chan.vcpu), None)
        if chan.state == X.EVTCHNSTAT_interdomain and chan.backend is None:
            peer = self.ports.get(chan.remote_port)
            if peer is not None and peer.port != port:
                peer.state = X.EVTCHNSTAT_unbound
        del self.ports[port]
        self.delivery.clear_pending(port)
        return 0

    def _close(self, read, write) -> int:
        raw = read(4)
        if raw is None:
            return -EFAULT
        return self.close_port(struct.unpack_from("<I", raw)[0])

    def send(self, port: int) -> int:
        """EVTCHNOP_send: notify the other end of ``port``."""
        if not self._valid(port):
            return -EINVAL
        chan = self.ports[port]
        chan.sends += 1
        if chan.state == X.EVTCHNSTAT_interdomain:
            if chan.backend is not None:
                self.backends[chan.backend](port)
            else:
                self.raise_port(chan.remote_port)
        elif chan.state == X.EVTCHNSTAT_ipi:
            self.raise_port(port)
        elif chan.state == X.EVTCHNSTAT_unbound:
            pass                    # nobody is connected yet: the send is dropped, as in Xen
        else:
            return -EINVAL          # virq and pirq ports cannot be sent on
        return 0

    def _send(self, read, write) -> int:
        raw = read(4)
        if raw is None:
            return -EFAULT
        return self.send(struct.unpack_from("<I", raw)[0])

    def _status(self, read, write) -> int:
        raw = read(8)
        if raw is None:
            return -EFAULT
        dom, port = struct.unpack_from("<H2xI", raw)
        if dom not in (X.DOMID_SELF, self.machine.domain.domid):
            return -ESRCH if dom != BACKEND_DOMID else -EPERM
        if not 0 <= port < self.nr_ports:
            return -EINVAL
        chan = self.ports.get(port, Port(port))
        out = struct.pack("<II", chan.state, chan.vcpu)
        if chan.state == X.EVTCHNSTAT_unbound:
            out += struct.pack("<H6x", chan.remote_dom)
        elif chan.state == X.EVTCHNSTAT_interdomain:
            out += struct.pack("<H2xI", chan.remote_dom, chan.remote_port)
        elif chan.state == X.EVTCHNSTAT_virq:
            out += struct.pack("<I4x", chan.virq)
        else:
            out += bytes(8)
        if not write(8, out):
            return -EFAULT
        return 0

    def _bind_vcpu(self, read, write) -> int:
        raw = read(8)
        if raw is None:
            return -EFAULT
        port, vcpu = struct.unpack_from("<II", raw)
        if not self._valid(port):
            return -EINVAL
        if vcpu >= len(self.machine.domain.vcpus):
            return -ENOENT
        chan = self.ports[port]
        if chan.state == X.EVTCHNSTAT_virq and chan.virq != X.VIRQ_DEBUG:
            # Only global VIRQs may move; per-vCPU ones are bound to their vCPU for good.
            if chan.virq in (X.VIRQ_TIMER, X.VIRQ_XENOPROF, X.VIRQ_XENPMU):
                return -EINVAL
        if chan.state == X.EVTCHNSTAT_ipi:
            return -EINVAL
        chan.vcpu = vcpu
        return 0

    def unmask(self, port: int) -> int:
        if not 0 < port < self.nr_ports:
            return -EINVAL
        chan = self.ports.get(port)
        vcpu = self.machine.domain.vcpus[chan.vcpu if chan else 0]
        if self.delivery.unmask(port, vcpu.vcpu_info_ma):
            self.machine.on_event_pending(vcpu, port)
        return 0

    def _unmask(self, read, write) -> int:
        raw = read(4)
        if raw is None:
            return -EFAULT
        return self.unmask(struct.unpack_from("<I", raw)[0])

    def _reset(self, read, write) -> int:
        raw = read(2)
        if raw is None:
            return -EFAULT
        (dom,) = struct.unpack_from("<H", raw)
        if dom not in (X.DOMID_SELF, self.machine.domain.domid):
            return -EPERM
        for port in [p for p, c in self.ports.items() if c.backend is None]:
            self.close_port(port)
        return 0

    def _init_control(self, read, write) -> int:
        return -ENOSYS              # no FIFO ABI: guests fall back to 2-level

    def _expand_array(self, read, write) -> int:
        return -ENOSYS

    def _set_priority(self, read, write) -> int:
        return -ENOSYS


_OPS = {
    X.EVTCHNOP_bind_interdomain: EventChannels._bind_interdomain,
    X.EVTCHNOP_bind_virq: EventChannels._bind_virq,
    X.EVTCHNOP_bind_pirq: EventChannels._bind_pirq,
    X.EVTCHNOP_close: EventChannels._close,
    X.EVTCHNOP_send: EventChannels._send,
    X.EVTCHNOP_status: EventChannels._status,
    X.EVTCHNOP_alloc_unbound: EventChannels._alloc_unbound,
    X.EVTCHNOP_bind_ipi: EventChannels._bind_ipi,
    X.EVTCHNOP_bind_vcpu: EventChannels._bind_vcpu,
    X.EVTCHNOP_unmask: EventChannels._unmask,
    X.EVTCHNOP_reset: EventChannels._reset,
    X.EVTCHNOP_init_control: EventChannels._init_control,
    X.EVTCHNOP_expand_array: EventChannels._expand_array,
    X.EVTCHNOP_set_priority: EventChannels._set_priority,
}

"""Event-channel ports and the ``event_channel_op`` hypercall (Xen's ``common/event_channel.c``).

A port is free, reserved (port 0), unbound (waiting for a named remote domain), interdomain
(connected to a port of a domain), virq, ipi or pirq, and is notified on one vCPU. Like Xen, xendbg
allocates port structures in buckets of 64 (``EVTCHNS_PER_BUCKET``): a port inside an allocated
bucket is *valid* even when free (its status is "closed", unmasking it is allowed), one beyond them
is ``-EINVAL`` for every operation. A domain may use ports up to ``max_evtchn_port``, which the
toolstack sets (xl's ``max_event_channels``, 1023 by default); xendbg's toolstack sets it to the
2-level ABI's limit (4096 ports on pv64, 1024 on pv32).

Domains: the guest, and domain 0, which xendbg reduces to the in-process backends (console,
xenstore). Their channels are interdomain channels to a dom0 port; sending on one calls the
backend. If the guest closes such a port, the dom0 end becomes unbound (to the guest) again and
``bind_interdomain(0, port)`` reconnects it, as with a real backend that keeps its port. Operations
naming dom0 for itself are refused as XSM refuses them to a domU (``-EPERM``); any other domain id
does not exist (``-ESRCH``).

Delivery is the 2-level ABI behind :class:`~xendbg.machine.events.evtchn_2l.Evtchn2L`. The FIFO ABI
is not offered: ``init_control``, ``expand_array`` and ``set_priority`` fail with ``-ENOSYS``, as on
a Xen without FIFO support, which makes guests keep the 2-level ABI. Physical IRQs belong to
privileged domains: ``bind_pirq`` of a PIRQ the domain could have is ``-EPERM``.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass

from xendbg.machine.abi import xen as X
from xendbg.machine.abi.errno import EEXIST, EFAULT, EINVAL, ENOENT, ENOSPC, ENOSYS, EPERM, ESRCH
from xendbg.machine.events.evtchn_2l import Evtchn2L

# PIRQ numbers below nr_pirqs exist but none is the domain's to bind (no hardware is behind it).
from xendbg.machine.physdev import NR_PIRQS_DOMU

BACKEND_DOMID = 0
EVTCHNS_PER_BUCKET = 64       # PAGE_SIZE / sizeof(struct evtchn), the struct being 64-byte aligned
PER_VCPU_VIRQS = frozenset({X.VIRQ_TIMER, X.VIRQ_DEBUG, X.VIRQ_XENOPROF, X.VIRQ_XENPMU})

STATE_NAMES = {X.EVTCHNSTAT_closed: "closed", X.EVTCHNSTAT_unbound: "unbound",
               X.EVTCHNSTAT_interdomain: "interdomain", X.EVTCHNSTAT_pirq: "pirq",
               X.EVTCHNSTAT_virq: "virq", X.EVTCHNSTAT_ipi: "ipi"}

# Size of each EVTCHNOP argument (the same on both ABIs): Xen copies the whole structure in before
# acting (a fault is -EFAULT) and, for the operations that return something, the whole of it out.
ARG_SIZES = {X.EVTCHNOP_bind_interdomain: 12, X.EVTCHNOP_bind_virq: 12, X.EVTCHNOP_bind_pirq: 12,
             X.EVTCHNOP_close: 4, X.EVTCHNOP_send: 4, X.EVTCHNOP_status: 24,
             X.EVTCHNOP_alloc_unbound: 8, X.EVTCHNOP_bind_ipi: 8, X.EVTCHNOP_bind_vcpu: 8,
             X.EVTCHNOP_unmask: 4, X.EVTCHNOP_reset: 2, X.EVTCHNOP_reset_cont: 2}
# The old hypercall (16) serves only these; reset and the FIFO operations are -ENOSYS there.
COMPAT_OPS = frozenset({X.EVTCHNOP_bind_interdomain, X.EVTCHNOP_bind_virq, X.EVTCHNOP_bind_pirq,
                        X.EVTCHNOP_close, X.EVTCHNOP_send, X.EVTCHNOP_status,
                        X.EVTCHNOP_alloc_unbound, X.EVTCHNOP_bind_ipi, X.EVTCHNOP_bind_vcpu,
                        X.EVTCHNOP_unmask})
EVTCHN_OP_COMPAT_SIZE = 28     # struct evtchn_op {u32 cmd; union u}


def virq_is_global(virq: int) -> bool:
    """Per-vCPU VIRQs are bound on each vCPU separately; the others only on vCPU 0, then moved."""
    return virq not in PER_VCPU_VIRQS


@dataclass
class Port:
    port: int
    state: int = X.EVTCHNSTAT_closed
    vcpu: int = 0                    # the vCPU notified (notify_vcpu_id)
    remote_dom: int = 0              # unbound: who may bind; interdomain: the other end's domain
    remote_port: int = 0
    virq: int = 0
    backend: str | None = None       # interdomain to dom0: the backend at the other end
    sends: int = 0                   # times the guest sent on it
    raised: int = 0                  # times Xen raised it towards the guest


@dataclass
class BackendEnd:
    """A backend's port in (notional) dom0, unbound to the guest or bound to ``local_port``."""

    name: str
    dom0_port: int
    notify: Callable[[int], None]
    local_port: int | None = None


class EventChannels:
    """One domain's ports."""

    def __init__(self, machine, delivery: Evtchn2L, max_evtchn_port: int | None = None) -> None:
        self.machine = machine
        self.delivery = delivery
        self.nr_ports = delivery.nr_ports            # what the 2-level ABI can address
        self.max_evtchn_port = self.nr_ports - 1 if max_evtchn_port is None else max_evtchn_port
        self.valid_ports = EVTCHNS_PER_BUCKET        # Xen allocates bucket 0 with the domain
        self.ports: dict[int, Port] = {}             # every port that is not free
        self.backends: dict[str, BackendEnd] = {}
        self.virq_ports: dict[tuple[int, int], int] = {}    # (vCPU of the binding, virq) → port

    @property
    def domid(self) -> int:
        return self.machine.domain.domid

    # -- set-up by the toolstack ----------------------------------------------------------------
    def connect_backend(self, port: int, name: str, notify: Callable[[int], None]) -> None:
        """What xl and a backend daemon do: an interdomain channel from guest ``port`` to dom0.

        The dom0 end gets the same port number (xendbg's dom0 has no other ports to collide with).
        """
        while port >= self.valid_ports:
            self.valid_ports += EVTCHNS_PER_BUCKET
        end = BackendEnd(name, port, notify, port)
        self.backends[name] = end
        self.ports[port] = Port(port, X.EVTCHNSTAT_interdomain, remote_dom=BACKEND_DOMID,
                                remote_port=end.dom0_port, backend=name)

    # -- raising ports towards the guest -----------------------------------------------------------
    def raise_port(self, port: int) -> None:
        """Xen's ``evtchn_port_set_pending``: mark ``port`` pending on its vCPU."""
        chan = self.ports.get(port)
        if chan is None:
            return
        chan.raised += 1
        vcpu = self.machine.domain.vcpus[chan.vcpu]
        if self.delivery.set_pending(port, vcpu.vcpu_info_ma):
            self.machine.on_event_pending(vcpu, port)

    def raise_virq(self, virq: int, vcpu: int = 0) -> None:
        """``send_guest_vcpu_virq`` / ``send_guest_global_virq``: raise the port bound to ``virq``.

        A global VIRQ is bound in vCPU 0's table and notified on the port's (movable) vCPU.
        """
        port = self.virq_ports.get((vcpu if not virq_is_global(virq) else 0, virq))
        if port is not None:
            self.raise_port(port)

    def notify_backend_event(self, name: str) -> None:
        """A backend signals the guest on the port connected to it (if it is connected)."""
        end = self.backends.get(name)
        if end is not None and end.local_port is not None:
            self.raise_port(end.local_port)

    # -- ports ----------------------------------------------------------------------------------
    def port_is_valid(self, port: int) -> bool:
        return 0 <= port < self.valid_ports

    def _get_free_port(self) -> int:
        """The lowest free port, allocating its bucket if needed; -ENOSPC past the limits."""
        for port in range(1, min(self.max_evtchn_port, self.nr_ports - 1) + 1):
            if port not in self.ports:
                while port >= self.valid_ports:
                    self.valid_ports += EVTCHNS_PER_BUCKET
                return port
        return -ENOSPC

    def _dom_kind(self, dom: int) -> str | None:
        """Xen's ``rcu_lock_domain_by_any_id``: "self", "dom0" (exists, not ours) or None."""
        if dom in (X.DOMID_SELF, self.domid):
            return "self"
        return "dom0" if dom == BACKEND_DOMID else None

    def free_port(self, port: int) -> None:
        """``evtchn_free``: the port becomes free, its pending bit cleared, its vCPU back to 0."""
        self.ports.pop(port, None)
        self.delivery.clear_pending(port)

    def close_port(self, port: int) -> int:
        """``evtchn_close``: free ``port``; the other end of an interdomain channel is unbound."""
        chan = self.ports.get(port) if self.port_is_valid(port) else None
        if chan is None:
            return -EINVAL            # beyond the buckets, free, or port 0 (reserved)
        if chan.state == X.EVTCHNSTAT_virq:
            for key in [k for k, p in self.virq_ports.items() if p == port]:
                del self.virq_ports[key]
        elif chan.state == X.EVTCHNSTAT_interdomain:
            if chan.backend is not None:
                self.backends[chan.backend].local_port = None
            else:
                peer = self.ports.get(chan.remote_port)
                if peer is not None and peer.port != port:
                    peer.state = X.EVTCHNSTAT_unbound
                    peer.remote_dom = self.domid
                    peer.remote_port = 0
        self.free_port(port)
        return 0

    def send(self, port: int) -> int:
        """``evtchn_send``: notify the other end of ``port``."""
        chan = self.ports.get(port) if self.port_is_valid(port) else None
        if chan is None:
            return -EINVAL
        chan.sends += 1
        if chan.state == X.EVTCHNSTAT_interdomain:
            if chan.backend is not None:
                self.backends[chan.backend].notify(port)
            else:
                self.raise_port(chan.remote_port)
        elif chan.state == X.EVTCHNSTAT_ipi:
            self.raise_port(port)
        elif chan.state != X.EVTCHNSTAT_unbound:
            return -EINVAL            # virq and pirq ports cannot be sent on
        # unbound: nobody is connected yet; the notification is dropped, as in Xen
        return 0

    def unmask(self, port: int) -> int:
        """``evtchn_unmask``: clear the mask; a pending port then signals its vCPU again."""
        if not self.port_is_valid(port):
            return -EINVAL
        chan = self.ports.get(port)
        vcpu = self.machine.domain.vcpus[chan.vcpu if chan else 0]
        if self.delivery.unmask(port, vcpu.vcpu_info_ma):
            self.machine.on_event_pending(vcpu, port)
        return 0

    # -- the hypercall ----------------------------------------------------------------------------
    def op(self, cmd: int, read: Callable[[int], bytes | None],
           write: Callable[[int, bytes], bool]) -> int:
        """Run EVTCHNOP ``cmd``; ``read(n)``/``write(off, data)`` access the argument structure."""
        handler = _OPS.get(cmd)
        if handler is None:
            return -ENOSYS
        raw = read(ARG_SIZES[cmd])
        if raw is None:
            return -EFAULT
        arg = bytearray(raw)
        rc = handler(self, arg)
        if rc == 0 and cmd in _COPY_BACK and not write(0, bytes(arg)):
            return -EFAULT            # the port stays allocated: "cleaning up would be a mess"
        return rc

    def op_compat(self, read: Callable[[int], bytes | None],
                  write: Callable[[int, bytes], bool]) -> int:
        """``do_event_channel_op_compat``: the whole ``struct evtchn_op`` is read first."""
        raw = read(EVTCHN_OP_COMPAT_SIZE)
        if raw is None:
            return -EFAULT
        (cmd,) = struct.unpack_from("<I", raw)
        if cmd not in COMPAT_OPS:
            return -ENOSYS
        union = raw[4:]               # every compat structure fits in the 24-byte union
        return self.op(cmd, lambda n: union[:n], lambda off, data: write(4 + off, data))

    def _alloc_unbound(self, arg: bytearray) -> int:
        dom, remote_dom = struct.unpack_from("<HH", arg)
        kind = self._dom_kind(dom)
        if kind is None:
            return -ESRCH
        if kind != "self":
            return -EPERM             # XSM: a domU may not make ports in another domain
        port = self._get_free_port()
        if port < 0:
            return port
        if remote_dom == X.DOMID_SELF:
            remote_dom = self.domid
        self.ports[port] = Port(port, X.EVTCHNSTAT_unbound, remote_dom=remote_dom)
        struct.pack_into("<I", arg, 4, port)
        return 0

    def _bind_interdomain(self, arg: bytearray) -> int:
        remote_dom, remote_port = struct.unpack_from("<HxxI", arg)
        if remote_dom == X.DOMID_SELF:
            remote_dom = self.domid
        if remote_dom not in (self.domid, BACKEND_DOMID):
            return -ESRCH
        lport = self._get_free_port()
        if lport < 0:
            return lport
        if remote_dom == BACKEND_DOMID:
            end = next((e for e in self.backends.values() if e.dom0_port == remote_port), None)
            if end is None or end.local_port is not None:
                return -EINVAL        # no unbound dom0 port for us there
            end.local_port = lport
            self.ports[lport] = Port(lport, X.EVTCHNSTAT_interdomain, remote_dom=BACKEND_DOMID,
                                     remote_port=remote_port, backend=end.name)
        else:
            remote = self.ports.get(remote_port) if self.port_is_valid(remote_port) else None
            if remote is None or remote.state != X.EVTCHNSTAT_unbound or \
                    remote.remote_dom != self.domid:
                return -EINVAL
            self.ports[lport] = Port(lport, X.EVTCHNSTAT_interdomain, remote_dom=self.domid,
                                     remote_port=remote_port)
            remote.state = X.EVTCHNSTAT_interdomain
            remote.remote_port = lport
        # Notifications sent while the remote end was unbound were dropped: Xen makes up for
        # them by always marking the new local port pending.
        self.raise_port(lport)
        struct.pack_into("<I", arg, 8, lport)
        return 0

    def _bind_virq(self, arg: bytearray) -> int:
        virq, vcpu = struct.unpack_from("<ii", arg)
        if not 0 <= virq < X.NR_VIRQS:
            return -EINVAL
        if virq_is_global(virq) and vcpu != 0:
            return -EINVAL
        if not 0 <= vcpu < len(self.machine.domain.vcpus):
            return -ENOENT
        if (vcpu, virq) in self.virq_ports:
            return -EEXIST
        port = self._get_free_port()
        if port < 0:
            return port
        self.ports[port] = Port(port, X.EVTCHNSTAT_virq, vcpu=vcpu, virq=virq)
        self.virq_ports[(vcpu, virq)] = port
        struct.pack_into("<I", arg, 8, port)
        return 0

    def _bind_ipi(self, arg: bytearray) -> int:
        (vcpu,) = struct.unpack_from("<i", arg)
        if not 0 <= vcpu < len(self.machine.domain.vcpus):
            return -ENOENT
        port = self._get_free_port()
        if port < 0:
            return port
        self.ports[port] = Port(port, X.EVTCHNSTAT_ipi, vcpu=vcpu)
        struct.pack_into("<I", arg, 4, port)
        return 0

    def _bind_pirq(self, arg: bytearray) -> int:
        (pirq,) = struct.unpack_from("<i", arg)
        if not 0 <= pirq < NR_PIRQS_DOMU:
            return -EINVAL
        return -EPERM                 # !pirq_access_permitted: no physical IRQ is a domU's

    def _close(self, arg: bytearray) -> int:
        return self.close_port(struct.unpack_from("<I", arg)[0])

    def _send(self, arg: bytearray) -> int:
        return self.send(struct.unpack_from("<I", arg)[0])

    def _status(self, arg: bytearray) -> int:
        """Fill in status, vcpu and the union; fields Xen does not set keep the guest's bytes."""
        dom, port = struct.unpack_from("<HxxI", arg)
        kind = self._dom_kind(dom)
        if kind is None:
            return -ESRCH
        if kind != "self":
            return -EPERM             # XSM: another domain's ports are not a domU's to see
        if not self.port_is_valid(port):
            return -EINVAL
        chan = self.ports.get(port, Port(port))
        struct.pack_into("<II", arg, 8, chan.state, chan.vcpu)
        if chan.state == X.EVTCHNSTAT_unbound:
            struct.pack_into("<H", arg, 16, chan.remote_dom)
        elif chan.state == X.EVTCHNSTAT_interdomain:
            struct.pack_into("<HxxI", arg, 16, chan.remote_dom, chan.remote_port)
        elif chan.state == X.EVTCHNSTAT_virq:
            struct.pack_into("<I", arg, 16, chan.virq)
        return 0

    def _bind_vcpu(self, arg: bytearray) -> int:
        port, vcpu = struct.unpack_from("<II", arg)
        if vcpu >= len(self.machine.domain.vcpus):
            return -ENOENT
        chan = self.ports.get(port) if self.port_is_valid(port) else None
        if chan is None:
            return -EINVAL
        if chan.state == X.EVTCHNSTAT_virq:
            if not virq_is_global(chan.virq):
                return -EINVAL        # a per-vCPU VIRQ stays on the vCPU it was bound on
        elif chan.state not in (X.EVTCHNSTAT_unbound, X.EVTCHNSTAT_interdomain,
                                X.EVTCHNSTAT_pirq):
            return -EINVAL            # IPIs are bound to their vCPU for good
        chan.vcpu = vcpu
        return 0

    def _unmask(self, arg: bytearray) -> int:
        return self.unmask(struct.unpack_from("<I", arg)[0])

    def _reset(self, arg: bytearray) -> int:
        """Close every port of the domain (the backends' channels too: their dom0 ends unbind)."""
        (dom,) = struct.unpack_from("<H", arg)
        kind = self._dom_kind(dom)
        if kind is None:
            return -ESRCH
        if kind != "self":
            return -EPERM
        for port in sorted(self.ports):
            self.close_port(port)
        return 0


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
    X.EVTCHNOP_reset_cont: EventChannels._reset,
    # init_control, expand_array, set_priority (the FIFO ABI): not in the table → -ENOSYS.
}
# The operations whose argument Xen copies back to the guest on success.
_COPY_BACK = frozenset({X.EVTCHNOP_alloc_unbound, X.EVTCHNOP_bind_interdomain,
                        X.EVTCHNOP_bind_virq, X.EVTCHNOP_bind_ipi, X.EVTCHNOP_bind_pirq,
                        X.EVTCHNOP_status})

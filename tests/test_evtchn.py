"""Event channels through the hypercall interface (EVTCHNOP_*, hypercalls 32 and 16).

Each test builds a lab machine, writes the argument structure into a writable guest page and makes
the hypercall as the guest would (``Machine.hypercall``, result in rAX). The expected answers are
Xen's (``common/event_channel.c``, ``event_2l.c``). Ports 1 and 2 are the xenstore and console
channels the toolstack connected to dom0.
"""

from __future__ import annotations

import struct

import pytest
from unicorn import x86_const as U

from xendbg.machine.abi import xen as X
from xendbg.machine.events.evtchn import EVTCHNS_PER_BUCKET, NR_PIRQS_DOMU

GUESTS = ["hello-pv64", "hello-pv32"]
EINVAL, ENOENT, ESRCH, EPERM, EEXIST, EFAULT, ENOSPC, ENOSYS = 22, 2, 3, 1, 17, 14, 28, 38
UNUSED = 20                          # inside the first bucket, never allocated


class Guest:
    """A lab machine and a scratch page for hypercall arguments."""

    def __init__(self, m, va: int) -> None:
        self.m = m
        self.va = va

    def hypercall(self, nr: int, *args: int) -> int:
        self.m.hypercall(nr, list(args), 0)
        assert not self.m.internal_errors, self.m.internal_errors
        value = self.m.cpu.uc.reg_read(self.m.cpu.ax_reg)
        bits = self.m.abi.bits
        value &= (1 << bits) - 1
        return value - (1 << bits) if value >> (bits - 1) else value

    def op(self, cmd: int, arg: bytes, size: int | None = None) -> tuple[int, bytes]:
        """EVTCHNOP ``cmd`` with ``arg``; returns (result, the argument afterwards)."""
        self.m.guest.write(self.va, arg)
        rc = self.hypercall(X.HYPERVISOR_event_channel_op, cmd, self.va)
        return rc, self.m.guest.read(self.va, size or len(arg))

    # one helper per operation -------------------------------------------------------------------
    def alloc_unbound(self, dom=X.DOMID_SELF, remote=X.DOMID_SELF) -> tuple[int, int]:
        rc, out = self.op(X.EVTCHNOP_alloc_unbound, struct.pack("<HHI", dom, remote, 0xDEAD))
        return rc, struct.unpack_from("<I", out, 4)[0]

    def bind_interdomain(self, dom: int, port: int) -> tuple[int, int]:
        rc, out = self.op(X.EVTCHNOP_bind_interdomain, struct.pack("<HxxII", dom, port, 0xDEAD))
        return rc, struct.unpack_from("<I", out, 8)[0]

    def bind_virq(self, virq: int, vcpu: int = 0) -> tuple[int, int]:
        rc, out = self.op(X.EVTCHNOP_bind_virq, struct.pack("<III", virq, vcpu, 0xDEAD))
        return rc, struct.unpack_from("<I", out, 8)[0]

    def bind_ipi(self, vcpu: int = 0) -> tuple[int, int]:
        rc, out = self.op(X.EVTCHNOP_bind_ipi, struct.pack("<II", vcpu, 0xDEAD))
        return rc, struct.unpack_from("<I", out, 4)[0]

    def port_op(self, cmd: int, port: int) -> int:
        return self.op(cmd, struct.pack("<I", port))[0]

    def status(self, port: int, dom: int = X.DOMID_SELF) -> tuple[int, tuple]:
        arg = struct.pack("<HxxIII", dom, port, 0xFFFFFFFF, 0xFFFFFFFF) + b"\xAA" * 8
        rc, out = self.op(X.EVTCHNOP_status, arg)
        status, vcpu = struct.unpack_from("<II", out, 8)
        return rc, (status, vcpu, out[16:24])

    def bind_vcpu(self, port: int, vcpu: int) -> int:
        return self.op(X.EVTCHNOP_bind_vcpu, struct.pack("<II", port, vcpu))[0]

    # shared_info bits ------------------------------------------------------------------------------
    def pending(self, port: int) -> bool:
        return self.m.evtchn.delivery.is_pending(port)

    def masked(self, port: int) -> bool:
        return self.m.evtchn.delivery.is_masked(port)

    def selector(self) -> int:
        ma = self.m.vcpu.vcpu_info_ma + self.m.abi.vcpu_pending_sel
        return int.from_bytes(self.m.memory.read(ma, self.m.abi.word), "little")

    def upcall_pending(self) -> int:
        return self.m.memory.view[self.m.vcpu.vcpu_info_ma]

    def clear_delivery(self) -> None:
        """What a guest's upcall handler does: consume the selector and the pending flag."""
        ma = self.m.vcpu.vcpu_info_ma
        self.m.memory.write(ma + self.m.abi.vcpu_pending_sel, bytes(self.m.abi.word))
        self.m.memory.view[ma] = 0


@pytest.fixture(params=GUESTS)
def g(request, lab_machine, scratch_va):
    m = lab_machine(request.param)
    return Guest(m, scratch_va(m))


def test_store_and_console_are_interdomain_to_dom0(g):
    for port in (1, 2):
        rc, (status, vcpu, union) = g.status(port)
        assert rc == 0 and status == X.EVTCHNSTAT_interdomain and vcpu == 0
        dom, remote = struct.unpack("<HxxI", union)
        assert dom == 0 and remote == port


def test_alloc_unbound(g):
    rc, port = g.alloc_unbound()
    assert (rc, port) == (0, 3), "the lowest free port after the toolstack's two"
    rc, (status, vcpu, union) = g.status(port)
    assert (rc, status, vcpu) == (0, X.EVTCHNSTAT_unbound, 0)
    assert struct.unpack_from("<H", union)[0] == g.m.domain.domid, "DOMID_SELF means our domid"
    assert union[2:] == b"\xAA" * 6, "Xen writes only u.unbound.dom"
    rc, port2 = g.alloc_unbound(remote=0)
    assert rc == 0 and port2 == 4
    assert struct.unpack_from("<H", g.status(port2)[1][2])[0] == 0
    assert g.alloc_unbound(dom=0) == (-EPERM, 0xDEAD), "dom0 exists, but is not ours"
    assert g.alloc_unbound(dom=9) == (-ESRCH, 0xDEAD)
    assert g.hypercall(X.HYPERVISOR_event_channel_op, X.EVTCHNOP_alloc_unbound, 0x1000) == -EFAULT


def test_a_failed_copy_back_keeps_the_port(g):
    """Xen does not undo the allocation when it cannot write the port number back."""
    pt = next(r for r in g.m.layout.regions if r.name == "page tables")
    va = pt.va + 0x800                      # mapped read-only
    ma = g.m.guest.translate(va)
    g.m.memory.write(ma, struct.pack("<HHI", X.DOMID_SELF, X.DOMID_SELF, 0))
    assert g.hypercall(X.HYPERVISOR_event_channel_op, X.EVTCHNOP_alloc_unbound, va) == -EFAULT
    assert g.status(3)[1][0] == X.EVTCHNSTAT_unbound


def test_loopback_interdomain(g):
    _, a = g.alloc_unbound()
    rc, b = g.bind_interdomain(X.DOMID_SELF, a)
    assert rc == 0 and b == a + 1
    assert g.pending(b), "Xen marks the new local port pending (lost notifications)"
    assert not g.pending(a)
    for port, peer in ((a, b), (b, a)):
        rc, (status, _vcpu, union) = g.status(port)
        assert status == X.EVTCHNSTAT_interdomain
        assert struct.unpack("<HxxI", union) == (g.m.domain.domid, peer)
    assert g.port_op(X.EVTCHNOP_send, b) == 0 and g.pending(a)
    g.m.evtchn.delivery.clear_pending(b)
    assert g.port_op(X.EVTCHNOP_send, a) == 0 and g.pending(b)
    # A port that is not unbound, or unbound to another domain, cannot be bound.
    _, c = g.alloc_unbound(remote=0)
    assert g.bind_interdomain(X.DOMID_SELF, a)[0] == -EINVAL
    assert g.bind_interdomain(X.DOMID_SELF, c)[0] == -EINVAL
    assert g.bind_interdomain(X.DOMID_SELF, UNUSED)[0] == -EINVAL
    assert g.bind_interdomain(X.DOMID_SELF, 4096)[0] == -EINVAL
    assert g.bind_interdomain(9, a)[0] == -ESRCH
    assert g.bind_interdomain(0, 77)[0] == -EINVAL, "dom0 has no unbound port 77 for us"
    # Closing one end makes the other unbound to us again, and re-bindable.
    assert g.port_op(X.EVTCHNOP_close, b) == 0
    rc, (status, _vcpu, union) = g.status(a)
    assert status == X.EVTCHNSTAT_unbound and struct.unpack_from("<H", union)[0] == 1
    assert g.bind_interdomain(X.DOMID_SELF, a) == (0, b)


def test_backend_ports_close_and_rebind(g):
    console = g.m.evtchn.backends["console"]
    assert g.port_op(X.EVTCHNOP_close, 2) == 0
    assert g.status(2)[1][0] == X.EVTCHNSTAT_closed and console.local_port is None
    g.m.evtchn.notify_backend_event("console")          # nobody to tell: nothing raised
    assert not g.pending(2)
    rc, port = g.bind_interdomain(0, 2)
    assert (rc, port) == (0, 2) and console.local_port == 2
    rc, (status, _vcpu, union) = g.status(2)
    assert status == X.EVTCHNSTAT_interdomain and struct.unpack("<HxxI", union) == (0, 2)
    assert g.bind_interdomain(0, 2)[0] == -EINVAL, "already bound"
    g.m.evtchn.delivery.clear_pending(2)
    g.m.evtchn.notify_backend_event("console")
    assert g.pending(2)


def test_send_on_the_console_port_runs_the_backend(g):
    before = g.m.evtchn.ports[2].sends
    assert g.port_op(X.EVTCHNOP_send, 2) == 0
    assert g.m.evtchn.ports[2].sends == before + 1


def test_bind_virq(g):
    rc, timer = g.bind_virq(X.VIRQ_TIMER)
    assert rc == 0
    assert g.bind_virq(X.VIRQ_TIMER) == (-EEXIST, 0xDEAD)
    assert g.bind_virq(X.VIRQ_TIMER, 1)[0] == -ENOENT, "per-vCPU VIRQ, but there is one vCPU"
    assert g.bind_virq(X.VIRQ_CONSOLE, 1)[0] == -EINVAL, "global VIRQs bind on vCPU 0"
    assert g.bind_virq(X.NR_VIRQS)[0] == -EINVAL
    assert g.bind_virq(0xFFFFFFFF)[0] == -EINVAL
    rc, (status, vcpu, union) = g.status(timer)
    assert (status, vcpu, struct.unpack_from("<I", union)[0]) == (X.EVTCHNSTAT_virq, 0,
                                                                  X.VIRQ_TIMER)
    assert g.port_op(X.EVTCHNOP_send, timer) == -EINVAL, "a VIRQ port cannot be sent on"
    g.m.evtchn.raise_virq(X.VIRQ_TIMER, 0)
    assert g.pending(timer)
    rc, con = g.bind_virq(X.VIRQ_CONSOLE)
    assert rc == 0
    g.m.evtchn.raise_virq(X.VIRQ_CONSOLE)
    assert g.pending(con)
    assert g.bind_vcpu(timer, 0) == -EINVAL, "a per-vCPU VIRQ cannot move"
    assert g.bind_vcpu(con, 0) == 0, "a global one can"
    assert g.port_op(X.EVTCHNOP_close, timer) == 0
    assert not g.pending(timer), "closing clears the pending bit"
    assert g.bind_virq(X.VIRQ_TIMER)[0] == 0, "and frees the VIRQ"


def test_bind_ipi(g):
    rc, port = g.bind_ipi()
    assert rc == 0
    assert g.bind_ipi(1)[0] == -ENOENT
    assert g.bind_ipi(0xFFFFFFFF)[0] == -ENOENT
    assert g.status(port)[1][:2] == (X.EVTCHNSTAT_ipi, 0)
    assert g.port_op(X.EVTCHNOP_send, port) == 0 and g.pending(port)
    assert g.bind_vcpu(port, 0) == -EINVAL


def test_bind_pirq_is_refused(g):
    def bind_pirq(pirq):
        return g.op(X.EVTCHNOP_bind_pirq, struct.pack("<III", pirq, 0, 0xDEAD))

    rc, out = bind_pirq(1)
    assert rc == -EPERM and struct.unpack_from("<I", out, 8)[0] == 0xDEAD
    assert bind_pirq(NR_PIRQS_DOMU - 1)[0] == -EPERM
    assert bind_pirq(NR_PIRQS_DOMU)[0] == -EINVAL
    assert bind_pirq(0xFFFFFFFF)[0] == -EINVAL


@pytest.mark.parametrize("cmd", [X.EVTCHNOP_close, X.EVTCHNOP_send])
def test_bad_ports_for_close_and_send(g, cmd):
    for port in (0, UNUSED, EVTCHNS_PER_BUCKET, 4096, g.m.evtchn.nr_ports, 0xFFFFFFFF):
        assert g.port_op(cmd, port) == -EINVAL, port


def test_close_twice_and_send_on_unbound(g):
    _, port = g.alloc_unbound()
    assert g.port_op(X.EVTCHNOP_send, port) == 0, "nobody connected: dropped"
    assert not g.pending(port) and g.selector() == 0
    assert g.port_op(X.EVTCHNOP_close, port) == 0
    assert g.port_op(X.EVTCHNOP_close, port) == -EINVAL


def test_status_errors_and_free_ports(g):
    assert g.status(0)[:2] == (0, (X.EVTCHNSTAT_closed, 0, b"\xAA" * 8)), "port 0 is reserved"
    assert g.status(UNUSED)[1][0] == X.EVTCHNSTAT_closed
    assert g.status(EVTCHNS_PER_BUCKET)[0] == -EINVAL, "beyond the allocated bucket"
    assert g.status(g.m.evtchn.nr_ports)[0] == -EINVAL
    assert g.status(1, dom=0)[0] == -EPERM
    assert g.status(1, dom=9)[0] == -ESRCH
    assert g.status(1, dom=g.m.domain.domid)[1][0] == X.EVTCHNSTAT_interdomain
    across = g.va + 0x1000 - 12             # the structure may straddle two pages
    g.m.guest.write(across, struct.pack("<HxxI", X.DOMID_SELF, 1) + b"\0" * 16)
    assert g.hypercall(X.HYPERVISOR_event_channel_op, X.EVTCHNOP_status, across) == 0
    assert struct.unpack("<II", g.m.guest.read(across + 8, 8)) == (X.EVTCHNSTAT_interdomain, 0)
    assert g.hypercall(X.HYPERVISOR_event_channel_op, X.EVTCHNOP_status, 0x1000) == -EFAULT


def test_buckets_grow_with_allocation(g):
    ports = [g.alloc_unbound()[1] for _ in range(EVTCHNS_PER_BUCKET - 3)]
    assert ports[-1] == EVTCHNS_PER_BUCKET - 1
    assert g.status(EVTCHNS_PER_BUCKET)[0] == -EINVAL
    assert g.alloc_unbound() == (0, EVTCHNS_PER_BUCKET)
    assert g.status(EVTCHNS_PER_BUCKET + 1)[1][0] == X.EVTCHNSTAT_closed


def test_bind_vcpu(g):
    _, port = g.alloc_unbound()
    assert g.bind_vcpu(port, 0) == 0
    assert g.bind_vcpu(port, 1) == -ENOENT
    assert g.bind_vcpu(4096, 1) == -ENOENT, "the vCPU is checked before the port"
    assert g.bind_vcpu(1, 0) == 0, "interdomain ports may move"
    for port in (0, UNUSED, 4096):
        assert g.bind_vcpu(port, 0) == -EINVAL


def test_unmask_reraises_a_pending_masked_port_once(g):
    _, port = g.bind_ipi()
    g.m.evtchn.delivery.mask(port)
    assert g.port_op(X.EVTCHNOP_send, port) == 0
    assert g.pending(port) and g.selector() == 0 and g.upcall_pending() == 0
    assert g.port_op(X.EVTCHNOP_send, port) == 0, "a second send while pending changes nothing"
    assert g.port_op(X.EVTCHNOP_unmask, port) == 0
    bits = g.m.abi.word * 8
    assert not g.masked(port)
    assert g.selector() == 1 << (port // bits) and g.upcall_pending() == 1
    g.clear_delivery()
    assert g.port_op(X.EVTCHNOP_unmask, port) == 0
    assert g.selector() == 0 and g.upcall_pending() == 0, "not masked: not delivered twice"
    assert g.port_op(X.EVTCHNOP_unmask, 0) == 0
    assert g.port_op(X.EVTCHNOP_unmask, UNUSED) == 0
    assert g.port_op(X.EVTCHNOP_unmask, g.m.evtchn.nr_ports) == -EINVAL


def test_upcall_delivers_each_event_once(g, enter_guest):
    """With an event callback and the vCPU unmasked, the next hypercall exit makes the upcall."""
    m = g.m
    enter_guest(m)
    target = g.va + 0x800
    if m.abi.bits == 64:
        assert g.hypercall(X.HYPERVISOR_set_callbacks, target, 0, 0) == 0
    else:
        assert g.hypercall(X.HYPERVISOR_set_callbacks, m.abi.kernel_cs, target, 0, 0) == 0
    _, port = g.bind_ipi()
    assert g.upcall_pending() == 0
    m.traps.set_upcall_mask(m.vcpu, 0)
    events = []
    m.listeners.append(lambda e: events.append(e) if e.kind == "upcall" else None)
    assert g.port_op(X.EVTCHNOP_send, port) == 0
    assert len(events) == 1 and m.cpu.ip == target
    assert m.traps.upcall_mask(m.vcpu) == 1, "masked on entry"
    assert g.port_op(X.EVTCHNOP_send, port) == 0, "still pending: no second event"
    assert len(events) == 1


def test_reset(g):
    _, a = g.alloc_unbound()
    g.bind_ipi()
    assert g.op(X.EVTCHNOP_reset, struct.pack("<H", 9))[0] == -ESRCH
    assert g.op(X.EVTCHNOP_reset, struct.pack("<H", 0))[0] == -EPERM
    assert g.op(X.EVTCHNOP_reset, struct.pack("<H", X.DOMID_SELF))[0] == 0
    for port in (1, 2, a, a + 1):
        assert g.status(port)[1][0] == X.EVTCHNSTAT_closed
    assert g.m.evtchn.backends["xenstore"].local_port is None
    assert g.alloc_unbound() == (0, 1)
    assert g.bind_interdomain(0, 1) == (0, 2), "the xenstore's dom0 port is unbound to us"


def test_fifo_abi_is_not_offered(g):
    for cmd in (X.EVTCHNOP_init_control, X.EVTCHNOP_expand_array, X.EVTCHNOP_set_priority, 99):
        assert g.op(cmd, b"\0" * 24)[0] == -ENOSYS


def test_compat_hypercall(g):
    m = g.m

    def compat(cmd, union):
        m.guest.write(g.va, struct.pack("<I", cmd) + union.ljust(24, b"\0"))
        return g.hypercall(X.HYPERVISOR_event_channel_op_compat, g.va), m.guest.read(g.va, 28)

    rc, out = compat(X.EVTCHNOP_status, struct.pack("<HxxI", X.DOMID_SELF, 2))
    assert rc == 0 and struct.unpack_from("<I", out, 4 + 8)[0] == X.EVTCHNSTAT_interdomain
    rc, out = compat(X.EVTCHNOP_alloc_unbound, struct.pack("<HH", X.DOMID_SELF, X.DOMID_SELF))
    assert rc == 0 and struct.unpack_from("<I", out, 8)[0] == 3
    assert compat(X.EVTCHNOP_reset, struct.pack("<H", X.DOMID_SELF))[0] == -ENOSYS
    assert compat(X.EVTCHNOP_init_control, b"")[0] == -ENOSYS
    assert g.status(1)[1][0] == X.EVTCHNSTAT_interdomain, "the compat reset did nothing"
    # Xen reads all 28 bytes first: an argument that ends on an unmapped page faults.
    end = m.layout.mapped_end_va
    m.guest.write(end - 8, struct.pack("<II", X.EVTCHNOP_send, 2))
    assert g.hypercall(X.HYPERVISOR_event_channel_op_compat, end - 8) == -EFAULT


def test_port_space_is_the_2l_abi(g):
    """4096 ports on pv64, 1024 on pv32: every one can be allocated, then -ENOSPC."""
    nr = g.m.evtchn.nr_ports
    assert nr == (4096 if g.m.abi.bits == 64 else 1024)
    last = None
    for _ in range(nr - 3):
        rc, last = g.alloc_unbound()
        assert rc == 0
    assert last == nr - 1
    assert g.alloc_unbound() == (-ENOSPC, 0xDEAD)
    assert g.port_op(X.EVTCHNOP_send, nr - 1) == 0
    assert g.port_op(X.EVTCHNOP_close, nr - 1) == 0
    assert g.alloc_unbound() == (0, nr - 1)


def test_upcall_on_the_way_out_of_a_syscall_hypercall(lab_machine, scratch_va, enter_guest):
    """The frame saves the instruction after the syscall, and the hypercall's result in RAX."""
    m = lab_machine("hello-pv64")
    g = Guest(m, scratch_va(m))
    enter_guest(m)
    code, handler = g.va + 0x600, g.va + 0x800
    # mov $17,%eax (xen_version); xor %edi,%edi (XENVER_version); syscall
    m.guest.write(code, bytes.fromhex("b811000000" "31ff" "0f05"))
    assert g.hypercall(X.HYPERVISOR_set_callbacks, handler, 0, 0) == 0
    _, port = g.bind_ipi()
    assert g.port_op(X.EVTCHNOP_send, port) == 0 and g.upcall_pending() == 1
    m.traps.set_upcall_mask(m.vcpu, 0)
    m.cpu.ip = code
    upcalls = []

    def stop_at_upcall(event):
        if event.kind == "upcall":
            upcalls.append(event)
            m.request_stop()

    m.listeners.append(stop_at_upcall)
    assert m.run(max_insns=100) == "stop"
    assert len(upcalls) == 1 and m.cpu.ip == handler
    uc = m.cpu.uc
    rip, _cs, _rflags = struct.unpack("<3Q", m.guest.read(uc.reg_read(U.UC_X86_REG_RSP) + 16, 24))
    assert rip == code + 9, "the instruction after the syscall"
    assert uc.reg_read(U.UC_X86_REG_RAX) == 4 << 16 | 17, "the hypercall's result is kept"

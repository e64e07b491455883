"""``physdev_op`` as an unprivileged PV domU gets it (Xen's ``arch/x86/physdev.c``).

xendbg's domU owns no physical device. Like a domU on real Xen it still has a PIRQ number space
(``nr_pirqs`` = the host's GSIs + ``extra_domU_pirqs``), whose numbers it may allocate but never
bind to hardware:

* ``set_iopl`` and ``set_iobitmap`` are accepted: they only change the vCPU's virtual I/O privilege
  (Linux sets IOPL 1 at boot);
* ``pirq_eoi_gmfn_v1/v2`` register a page of the guest's own (once; ``-EBUSY`` after that);
* ``irq_status_query`` answers for any PIRQ below ``nr_pirqs`` (``needs_eoi``, as Xen always
  says), ``-EINVAL`` above;
* ``get_free_pirq`` allocates a number (GSI type: from 16 up below the GSIs; otherwise from the top
  down above them; ``-ENOSPC`` when all are taken); ``eoi`` is accepted for an allocated PIRQ only
  (Xen's ``pirq_info`` lookup), ``-EINVAL`` otherwise; binding one to an event channel is still
  refused (``evtchn.py``: no physical IRQ is behind it);
* everything that touches real hardware (APIC, PCI, MSI, GSI, PIRQ mapping, debug port) is for
  privileged domains: ``-EPERM``;
* unknown commands: ``-ENOSYS``.
"""

from __future__ import annotations

import struct

from xendbg.machine.abi.errno import EBUSY, EFAULT, EINVAL, ENOSPC, ENOSYS, EPERM

PHYSDEVOP_IRQ_UNMASK_NOTIFY = 4
PHYSDEVOP_irq_status_query = 5
PHYSDEVOP_set_iopl = 6
PHYSDEVOP_set_iobitmap = 7
PHYSDEVOP_eoi = 12
PHYSDEVOP_pirq_eoi_gmfn_v1 = 17
PHYSDEVOP_get_free_pirq = 23
PHYSDEVOP_pirq_eoi_gmfn_v2 = 28

PRIVILEGED = frozenset({8, 9, 10, 11, 13, 14, 15, 16, 19, 20, 21, 24, 25, 26, 27, 29, 30, 31})
# A PV domU's nr_pirqs is nr_static_irqs (the host's GSIs; 24 with one IO-APIC) plus
# extra_domU_pirqs (32).
NR_IRQS_GSI = 24
NR_PIRQS_DOMU = NR_IRQS_GSI + 32
MAP_PIRQ_TYPE_GSI = 1
XENIRQSTAT_needs_eoi = 1


def get_free_pirq(domain, kind: int) -> int:
    """Allocate a PIRQ number the way Xen's ``get_free_pirq`` picks one, or ``-ENOSPC``."""
    taken = domain.pirqs_allocated
    if kind == MAP_PIRQ_TYPE_GSI:
        candidates = range(16, NR_IRQS_GSI)
    else:
        candidates = range(NR_PIRQS_DOMU - 1, NR_IRQS_GSI - 1, -1)
    for pirq in candidates:
        if pirq not in taken:
            taken.add(pirq)
            return pirq
    return -ENOSPC


def do_physdev_op(m, cmd: int, arg: int) -> int:
    g = m.guest
    if cmd in PRIVILEGED:
        return -EPERM
    if cmd == PHYSDEVOP_set_iopl:
        raw = g.read(arg, 4)
        if raw is None:
            return -EFAULT
        (iopl,) = struct.unpack("<I", raw)
        if iopl > 3:
            return -EINVAL
        m.vcpu.iopl = iopl
        return 0
    if cmd == PHYSDEVOP_set_iobitmap:
        size = 16 if m.abi.bits == 64 else 8
        raw = g.read(arg, size)
        if raw is None:
            return -EFAULT
        bitmap = int.from_bytes(raw[:m.abi.word], "little")
        (nr_ports,) = struct.unpack_from("<I", raw, m.abi.word)
        if nr_ports > 65536 or not g.accessible(bitmap, 8192):
            return -EINVAL
        m.vcpu.iobitmap = (bitmap, nr_ports)
        return 0
    if cmd in (PHYSDEVOP_pirq_eoi_gmfn_v1, PHYSDEVOP_pirq_eoi_gmfn_v2):
        raw = g.read(arg, m.abi.word)
        if raw is None:
            return -EFAULT
        gmfn = int.from_bytes(raw, "little")
        if not m.owns_frame(gmfn):
            return -EINVAL
        if getattr(m.domain, "pirq_eoi_map_mfn", None):
            return -EBUSY
        m.domain.pirq_eoi_map_mfn = gmfn
        return 0
    if cmd == PHYSDEVOP_irq_status_query:           # {u32 irq; u32 flags (out)}
        raw = g.read(arg, 8)
        if raw is None:
            return -EFAULT
        (pirq,) = struct.unpack_from("<i", raw)
        if not 0 <= pirq < NR_PIRQS_DOMU:
            return -EINVAL
        return 0 if g.write(arg + 4, struct.pack("<I", XENIRQSTAT_needs_eoi)) else -EFAULT
    if cmd == PHYSDEVOP_eoi:
        raw = g.read(arg, 4)
        if raw is None:
            return -EFAULT
        (pirq,) = struct.unpack("<I", raw)
        return 0 if pirq in m.domain.pirqs_allocated else -EINVAL
    if cmd == PHYSDEVOP_get_free_pirq:              # {int type (in); u32 pirq (out)}
        raw = g.read(arg, 8)
        if raw is None:
            return -EFAULT
        (kind,) = struct.unpack_from("<i", raw)
        pirq = get_free_pirq(m.domain, kind)
        if pirq < 0:
            return pirq
        if not g.write(arg + 4, struct.pack("<I", pirq)):
            return -EFAULT                          # Xen too keeps the number allocated
        return 0
    if cmd == PHYSDEVOP_IRQ_UNMASK_NOTIFY:
        return 0                    # no PIRQ is bound, so there is nothing to unmask
    return -ENOSYS


def do_physdev_op_compat(m, arg: int) -> int:
    """The old form: ``struct physdev_op {u32 cmd; union u}``."""
    raw = m.guest.read(arg, 4)
    if raw is None:
        return -EFAULT
    (cmd,) = struct.unpack("<I", raw)
    return do_physdev_op(m, cmd, arg + 4)

"""``physdev_op`` as an unprivileged PV domU gets it (Xen's ``arch/x86/physdev.c``).

xendbg's domU owns no physical devices and no physical IRQs (``nr_pirqs`` is 0), so:

* ``set_iopl`` and ``set_iobitmap`` are accepted: they only change the vCPU's virtual I/O privilege
  (Linux sets IOPL 1 at boot);
* ``pirq_eoi_gmfn_v1/v2`` register a page of the guest's own (once; ``-EBUSY`` after that);
* queries about a PIRQ (``irq_status_query``, ``eoi``) fail with ``-EINVAL`` — there is none;
  ``get_free_pirq`` has none to give (``-ENOSPC``);
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
NR_PIRQS = 0


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
    if cmd in (PHYSDEVOP_irq_status_query, PHYSDEVOP_eoi):
        raw = g.read(arg, 4)
        if raw is None:
            return -EFAULT
        (pirq,) = struct.unpack("<I", raw)
        return -EINVAL if pirq >= NR_PIRQS else 0
    if cmd == PHYSDEVOP_get_free_pirq:
        if g.read(arg, 8) is None:
            return -EFAULT
        return -ENOSPC
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

"""GNU Mach 1.8+git20221224 (Debian's xen-486-dbg, an amd64 build) up to where it stops.

What happens, and why xendbg does what real Xen does (so this pins the behaviour down rather than
papering over it): after ``ktss_init``, ``i386at_init`` runs the LINUX_DEV "Keep BIOS memory
mapped" copy, ``kernel_page_dir[0] = kernel_page_dir[512]``, as a plain store. ``kernel_page_dir``
is a live L2 table, which Xen requires the guest to map read-only, so the store takes a #PF
(present, write). Xen's writable-page-table emulation (``ptwr``) covers L1 tables only, so Xen
bounces the fault to the guest. Mach's ``trap_from_kernel`` then switches to ``kernel_stack``,
which is still 0 this early, pushes below address 0, faults again, and Xen cannot write the bounce
frame for that fault: the domain is crashed. The banner and "Running on ..." sit in Mach's
``consbuf`` until ``hypcninit``, which runs later, so nothing reaches the console ring.
"""

from __future__ import annotations

from xendbg.machine.mmu._validate import T_L2
from xendbg.runner import RunOptions, load


def test_gnumach_write_to_its_read_only_l2_is_bounced_and_the_domain_crashes(debian_guest):
    m, _image, _path = load(RunOptions(kernel=str(debian_guest("gnumach-dbg"))))
    faults = []

    def on_event(event) -> None:
        if event.kind == "trap" and event.data["vector"] == 14:
            cr2 = event.data["cr2"]
            ma = m.guest.translate(cr2)
            mfn = None if ma is None else ma >> 12
            faults.append((cr2, event.data["error_code"], mfn,
                           None if mfn is None else int(m.mmu.pt.type[mfn]) & 0xF))

    m.listeners.append(on_event)
    m.run(max_insns=50_000_000)
    assert faults, "no page fault: Mach got further than expected (update this test)"
    cr2, error_code, mfn, page_type = faults[0]
    # A kernel-mode write to a present, read-only page that is an L2 table: bounced, not
    # emulated (ptwr is for L1 tables).
    assert error_code == 0x3
    assert page_type == T_L2, (hex(cr2), mfn)
    # The nested fault comes from Mach's own trap entry pushing below address 0.
    assert len(faults) >= 2 and faults[1][0] >= 0xFFFFFFFFFFFFF000
    assert m.domain.crashed and "bounce frame" in m.domain.crashed
    assert bytes(m.console.output) == b""          # the banner is still in Mach's consbuf

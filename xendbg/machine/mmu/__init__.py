"""The PV MMU: page types, pinning, validated page-table updates, p2m/M2P (issue: "The PV MMU").

Only the machine-facing interface exists so far; the hypercalls ``mmu_update``, ``mmuext_op``,
``update_va_mapping`` and ``memory_op`` are still rows without a handler in the hypercall table, so
a guest that calls them gets ``-ENOSYS`` (and the trace shows it).
"""

from __future__ import annotations


class Mmu:
    """Per-domain MMU state; ``machine`` gives access to memory, the domain and the vCPU."""

    def __init__(self, machine) -> None:
        self.m = machine

    def on_page_fault(self, vcpu, cr2: int, error_code: int) -> bool:
        """A #PF arrived: return True if Xen handled it itself (writable page tables), False to
        bounce it to the guest."""
        return False

    def write_cr3(self, vcpu, cr3: int) -> bool:
        """``mov %reg, %cr3`` from the guest kernel: False → #GP (not supported yet)."""
        return False

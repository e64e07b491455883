"""Virtual time (issue: "Deterministic virtual time"): TSC, pvclock, wallclock, timers, blocking.

For now the virtual TSC is the executed-instruction count and there are no timers: the machine asks
:meth:`Clock.next_deadline` for the next instruction count at which something is due (``None``: no
timer), and a vCPU that blocks with nothing pending stays blocked.
"""

from __future__ import annotations


class Clock:
    def __init__(self, machine) -> None:
        self.m = machine

    def tsc(self) -> int:
        """The virtual TSC: one tick per executed guest instruction (deterministic)."""
        return self.m.counter.insns

    def next_deadline(self) -> int | None:
        """Instruction count at which the next timer fires, or None."""
        return None

    def at_slice_boundary(self) -> None:
        """Called when a slice ends (budget reached): fire due timers."""

    def block(self, vcpu) -> bool:
        """A vCPU blocks with no event pending: fast-forward to the next deadline if there is one
        (firing it) and return True, or return False when nothing can ever wake it."""
        return False

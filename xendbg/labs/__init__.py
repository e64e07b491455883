"""Labs: small PV guests that each demonstrate one mechanism, with a guide and an automatic check.

``xendbg lab`` lists them; ``xendbg lab N`` prints the guide; ``xendbg lab N --check`` runs the
guest(s) headless and judges the ``CHECK`` lines they print.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Lab:
    number: int
    slug: str
    title: str
    guests: tuple[str, ...]

    @property
    def guide(self) -> Path:
        return HERE / f"{self.number:02d}-{self.slug}.md"


LABS = (
    Lab(0, "hello", "Booting a PV guest: start_info, hypercalls, the console, a trap",
        ("hello-pv64", "hello-pv32")),
    Lab(1, "mmu", "Direct paging: page types, pinning, validated updates, page faults",
        ("mmu-pv64", "mmu-pv32")),
    Lab(2, "events", "Event channels: ports, pending and mask bits, upcalls",
        ("events-pv64", "events-pv32")),
    Lab(3, "time", "Virtual time: pvclock, the wallclock, timers, blocking",
        ("time-pv64", "time-pv32")),
)


def find(spec: str) -> Lab | None:
    for lab in LABS:
        if spec in (str(lab.number), lab.slug, *lab.guests):
            return lab
    return None

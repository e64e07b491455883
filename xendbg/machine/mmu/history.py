"""What the MMU decided, and why: the record the debugger reads ("who pinned this frame?",
"why was this mmu_update refused?").

Every page-type change, pin, unpin, frame release and rejected update is appended to a bounded
deque as a :class:`Record` stamped with the instruction count and the guest instruction pointer
at that moment, and emitted as a machine event (``page_type`` or ``mmu_reject``) for subscribers.
A record costs one small object and, only when somebody listens, one event: cheap enough to be
always on. The current pin of each frame is also kept by mfn, so that "who pinned it" survives
any amount of later history.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

from xendbg.machine.abi.errno import errno_name

HISTORY_LENGTH = 65536        # a pin of a 256 MiB guest's tables types some 65000 frames


@dataclass(frozen=True, slots=True)
class Rejection:
    """Why Xen refused an update: the rule, and the entry it was checked on.

    ``mfn``/``index`` name the table entry (or the frame) the rule was applied to, ``old``/``new``
    its value before and the value asked for (None where a rule is not about an entry).
    """

    rule: str
    error: int                      # the negative errno the guest receives
    mfn: int | None = None
    index: int | None = None
    old: int | None = None
    new: int | None = None
    op: str = ""                    # filled in by the hypercall layer: "mmu_update[3]", …

    def text(self) -> str:
        where = ""
        if self.mfn is not None:
            where = f" (mfn {self.mfn:#x}" + (f" entry {self.index}" if self.index is not None
                                              else "") + ")"
        values = ""
        if self.new is not None:
            values = f": {self.old:#x} -> {self.new:#x}" if self.old is not None \
                else f": {self.new:#x}"
        op = f"{self.op}: " if self.op else ""
        return f"{op}{errno_name(self.error)} {self.rule}{where}{values}"


class Record(NamedTuple):
    """One decision, stamped with the instruction count and guest IP (a tuple: cheap to make)."""

    insns: int
    ip: int
    kind: str               # "type", "pin", "unpin", "free", "reject", "ptwr"
    mfn: int | None
    old: str
    new: str
    why: str


class History:
    """The MMU's history; ``where()`` gives (instruction count, guest IP), ``emit`` the events."""

    def __init__(self, where: Callable[[], tuple[int, int]], emit: Callable[..., None],
                 listening: Callable[[], bool] = lambda: True,
                 length: int = HISTORY_LENGTH) -> None:
        self.where = where
        self.emit = emit
        self.listening = listening
        self.records: deque[Record] = deque(maxlen=length)
        self.rejections: deque[Rejection] = deque(maxlen=length)
        self.pinned_by: dict[int, Record] = {}

    def _add(self, kind: str, mfn: int | None, old: str, new: str, why: str) -> Record:
        insns, ip = self.where()
        record = Record(insns, ip, kind, mfn, old, new, why)
        self.records.append(record)
        return record

    def type_change(self, mfn: int, old: str, new: str, why: str) -> None:
        self._add("type", mfn, old, new, why)
        self.emit("page_type", mfn=mfn, old=old, new=new, why=why)

    def type_changes(self, mfns: list[int], olds: list[str], new: str, why: str) -> None:
        """Many frames changed type at once (an L1 validated): one time stamp for all."""
        insns, ip = self.where()
        self.records.extend(Record(insns, ip, "type", mfn, old, new, why)
                            for mfn, old in zip(mfns, olds, strict=True))
        if self.listening():
            for mfn, old in zip(mfns, olds, strict=True):
                self.emit("page_type", mfn=mfn, old=old, new=new, why=why)

    def pin(self, mfn: int, type_name: str, why: str) -> None:
        self.pinned_by[mfn] = self._add("pin", mfn, type_name, type_name, why)
        self.emit("page_type", mfn=mfn, old=type_name, new=type_name, why=why, pinned=1)

    def unpin(self, mfn: int, type_name: str, why: str) -> None:
        self.pinned_by.pop(mfn, None)
        self._add("unpin", mfn, type_name, type_name, why)
        self.emit("page_type", mfn=mfn, old=type_name, new=type_name, why=why, pinned=0)

    def free(self, mfn: int, why: str) -> None:
        self.pinned_by.pop(mfn, None)
        self._add("free", mfn, "allocated", "free", why)

    def ptwr(self, mfn: int, index: int, old: int, new: int) -> None:
        self._add("ptwr", mfn, f"{old:#x}", f"{new:#x}", f"emulated write to L1 entry {index}")

    def reject(self, rejection: Rejection) -> None:
        self.rejections.append(rejection)
        text = rejection.text()
        self._add("reject", rejection.mfn, "", "", text)
        data = {"why": text, "rule": rejection.rule, "error": errno_name(rejection.error),
                "op": rejection.op}
        for key in ("mfn", "index", "old", "new"):
            value = getattr(rejection, key)
            if value is not None:
                data[key] = value
        self.emit("mmu_reject", **data)

    def of_frame(self, mfn: int) -> list[Record]:
        """Everything still in the history about ``mfn``, oldest first."""
        return [r for r in self.records if r.mfn == mfn]

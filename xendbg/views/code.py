"""Code: the disassembly around the instruction pointer, with symbols, breakpoint markers and the
current line. ``b`` on a line asks for a breakpoint there to be set or removed."""

from __future__ import annotations

from textual.binding import Binding
from textual.message import Message
from textual.reactive import reactive

from xendbg.messages import View
from xendbg.views.fmt import hexw
from xendbg.views.lines import Cell, LineTable

BREAK_MARK = "●"
CURRENT_MARK = "▶"


class CodeView(LineTable):
    columns = (("", 2), ("address", 16), ("symbol", 24), ("instruction", 60))
    BINDINGS = [Binding("b", "toggle_breakpoint", "Breakpoint", show=False)]

    view: reactive[View | None] = reactive(None, init=False)

    class BreakpointToggled(Message):
        """The user asked for a code breakpoint at ``address`` to be added or removed."""

        def __init__(self, address: int) -> None:
            super().__init__()
            self.address = address

    def row_count(self) -> int:
        view = self.view
        if view is None:
            return 0
        return max(1, len(view.snap.code.insns))

    def row_cells(self, row: int) -> list[Cell]:
        view = self.view
        code = view.snap.code
        if not code.insns:
            return [("", None), ("", None), ("", None), (code.error or "", "line-table--error")]
        insn = code.insns[row]
        marks = view.session.breakpoint_addresses
        is_bp = insn.address in marks
        current = insn.address == code.ip
        mark = (BREAK_MARK if is_bp else " ") + (CURRENT_MARK if current else " ")
        label = view.session.label(insn.address) or ""
        text = f"{insn.mnemonic} {insn.op_str}".strip()
        target = _target(insn.op_str)
        if target is not None:
            name = view.session.label(target)
            if name:
                text += f"  <{name}>"
        style = "line-table--current" if current else ("line-table--mark" if is_bp else None)
        return [(mark, "line-table--mark" if is_bp else style),
                (hexw(insn.address, view.snap.bits), style), (label, "line-table--dim"),
                (text, style)]

    def watch_view(self, old: View | None, view: View | None) -> None:
        """A new stop puts the cursor on the current instruction; the same stop shown again
        (a refresh) keeps it where the user moved it."""
        keep = None
        if old is not None and view is not None and old.snap.code.ip == view.snap.code.ip:
            keep = self._address_at(old, self.cursor)
        self.columns = (("", 2), ("address", 16 if view is None or view.snap.bits == 64 else 8),
                        ("symbol", 24), ("instruction", 60))
        self.rows_changed()
        if view is None:
            return
        target = keep if keep is not None else view.snap.code.ip
        for i, insn in enumerate(view.snap.code.insns):
            if insn.address == target:
                self.move_cursor(i, center=keep is None)
                break

    @staticmethod
    def _address_at(view: View, row: int) -> int | None:
        insns = view.snap.code.insns
        return insns[row].address if 0 <= row < len(insns) else None

    def selected_address(self) -> int | None:
        view = self.view
        if view is None or not view.snap.code.insns:
            return None
        return view.snap.code.insns[min(self.cursor, len(view.snap.code.insns) - 1)].address

    def action_toggle_breakpoint(self) -> None:
        address = self.selected_address()
        if address is not None:
            self.post_message(self.BreakpointToggled(address))


def _target(op_str: str) -> int | None:
    """The operand of a direct jump/call (a bare hex immediate)."""
    text = op_str.strip()
    if text.startswith("0x"):
        try:
            return int(text, 16)
        except ValueError:
            return None
    return None

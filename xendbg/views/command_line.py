"""The command line: the debugger's command language (the same as ``xendbg run --script``), with
history (up/down) and completion (tab; the suggestion also shows as you type).

Completion knows the commands and their aliases, ``info`` topics, the ``break`` forms, hypercall
and VIRQ names, and the guest's symbols (through ``complete``, given by the screen).
"""

from __future__ import annotations

import os
from collections.abc import Callable

from textual.binding import Binding
from textual.message import Message
from textual.suggester import Suggester
from textual.widgets import Input


def common_prefix(words: list[str]) -> str:
    return os.path.commonprefix(words) if words else ""


class CommandSuggester(Suggester):
    def __init__(self, complete: Callable[[str], list[str]]) -> None:
        super().__init__(use_cache=False, case_sensitive=True)
        self.complete = complete

    async def get_suggestion(self, value: str) -> str | None:
        options = self.complete(value)
        if len(options) == 1:
            return options[0]
        prefix = common_prefix(options)
        return prefix if len(prefix) > len(value) else None


class CommandLine(Input):
    BINDINGS = [
        Binding("up", "history(-1)", "Previous command", show=False),
        Binding("down", "history(1)", "Next command", show=False),
        Binding("tab", "complete", "Complete", show=False),
    ]

    class Candidates(Message):
        """Tab found several completions: show them."""

        def __init__(self, options: list[str]) -> None:
            super().__init__()
            self.options = options

    def __init__(self, complete: Callable[[str], list[str]], **kw) -> None:
        super().__init__(placeholder="command (help, break, continue, info evtchn, x/8xg rsp …)",
                         suggester=CommandSuggester(complete), **kw)
        # A blinking cursor at the bottom and the status bar at the top make Textual repaint the
        # whole screen twice a second (it repaints the span of what changed), guest running or not.
        self.cursor_blink = False
        self.complete = complete
        self.history: list[str] = []
        self._position = 0

    def remember(self, line: str) -> None:
        if line and (not self.history or self.history[-1] != line):
            self.history.append(line)
        self._position = len(self.history)

    def action_history(self, delta: int) -> None:
        if not self.history:
            return
        self._position = max(0, min(len(self.history), self._position + delta))
        self.value = self.history[self._position] if self._position < len(self.history) else ""
        self.cursor_position = len(self.value)

    def action_complete(self) -> None:
        options = self.complete(self.value)
        if not options:
            return
        if len(options) == 1:
            self.value = options[0] + ("" if options[0].endswith(" ") else " ")
        else:
            prefix = common_prefix(options)
            if len(prefix) > len(self.value):
                self.value = prefix
            else:
                self.post_message(self.Candidates(options))
        self.cursor_position = len(self.value)


def completions(line: str, commands: list[str], topics: list[str], hypercalls: list[str],
                virqs: list[str], symbols: Callable[[str], list[str]]) -> list[str]:
    """Whole-line completions of ``line`` (the line with its last word completed)."""
    words = line.split(" ")
    head, last = words[:-1], words[-1]
    if not head:
        return sorted(c for c in commands if c.startswith(last))
    cmd = head[0]
    stem = " ".join(head) + " "
    if cmd in ("info", "i") and len(head) == 1:
        options = topics
    elif cmd in ("help",) and len(head) == 1:
        options = commands
    elif cmd in ("break", "b") and len(head) == 1:
        options = ["hypercall", "event", "trap", "page", "crash", "console"] + symbols(last)
    elif cmd in ("break", "b") and head[1:2] == ["hypercall"] and len(head) == 2:
        options = hypercalls + ["any"]
    elif cmd in ("break", "b") and head[1:2] == ["event"] and len(head) == 2:
        options = [f"virq:{v}" for v in virqs] + ["any"]
    else:
        options = symbols(last.lstrip("*$"))
        if last.startswith("*"):
            options = ["*" + o for o in options]
    return sorted({stem + o for o in options if o.startswith(last)})

"""Console: what the guest printed (both console_io and the console ring). When the panel has the
focus, keystrokes go to the guest's console input (:class:`ConsoleView.Typed`); function keys and
ctrl+letter bindings stay with the app."""

from __future__ import annotations

from textual import events
from textual.message import Message

from xendbg.views.lines import TextLog

# Keys the guest gets as a terminal would send them.
KEY_BYTES = {"enter": b"\r", "tab": b"\t", "backspace": b"\x7f", "escape": b"\x1b",
             "up": b"\x1b[A", "down": b"\x1b[B", "right": b"\x1b[C", "left": b"\x1b[D",
             "home": b"\x1b[H", "end": b"\x1b[F", "delete": b"\x1b[3~"}


class ConsoleView(TextLog, can_focus=True):
    """The guest console (line API, the last 20000 lines)."""

    class Typed(Message):
        def __init__(self, data: bytes) -> None:
            super().__init__()
            self.data = data

    def write_guest(self, text: str, draw: bool = True) -> None:
        # Terminals treat \r\n as one line break; a bare \r would start a new line in a Log.
        text = text.replace("\r\n", "\n").replace("\r", "")
        self.write(text, draw)

    async def on_key(self, event: events.Key) -> None:
        data = KEY_BYTES.get(event.key)
        if data is None and event.character and event.is_printable:
            data = event.character.encode("utf-8")
        if data is None and event.key.startswith("ctrl+") and len(event.key) == 6 \
                and event.key[5] in "abdefghklnorstuvwxyz":
            data = bytes([ord(event.key[5]) - 96])      # ctrl+letter: control code
        if data is not None:
            event.stop()
            event.prevent_default()
            self.post_message(self.Typed(data))

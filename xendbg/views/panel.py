"""The base of the panels that render a whole view as one Rich ``Text``, one fact per line."""

from __future__ import annotations

from rich.text import Text
from textual.geometry import Region, Size
from textual.reactive import reactive
from textual.scroll_view import ScrollView
from textual.strip import Strip
from textual.visual import Visual, visualize

from xendbg.messages import View
from xendbg.views.lines import set_virtual_size

_CACHE_LIMIT = 4096          # drawn lines kept per panel (a panel shows tens)


class SnapshotPanel(ScrollView):
    """Set ``view`` (screen → panel); :meth:`render_view` turns it into a ``Text``.

    A fixed-size, scrolling Line API view: the panel's height comes from the stylesheet, never
    from what it shows, so a view with more or fewer lines (a backtrace that grows, a symbol under
    the registers) resizes the scrollable area in place and never lays the screen out again —
    a layout repaints every widget, and at a stop that is most of the time between F6 and the
    stop on screen. Each line is drawn by itself, as Textual draws the whole text (the panels do
    not wrap), and kept by content: a new view redraws only the lines that differ from the ones
    on screen, and a line that only moved (the stack below a longer backtrace) is not drawn again.
    """

    DEFAULT_CSS = "SnapshotPanel { height: 1fr; overflow-x: hidden; }"
    view: reactive[View | None] = reactive(None, init=False, repaint=False)
    EMPTY = "waiting for the machine…"

    def __init__(self, **kw) -> None:
        super().__init__(**kw)
        self._lines: list[Text] = [Text(self.EMPTY, style="dim")]
        self._keys: list[tuple] = [_key(self._lines[0])]
        self._drawn: dict[tuple, Strip] = {}        # a line's content → its strip, at this width
        self._drawn_width = -1

    def render_line(self, y: int) -> Strip:
        width = self.scrollable_content_region.width
        row = int(self.scroll_y) + y
        if row >= len(self._lines):
            return Strip.blank(width, self.visual_style.rich_style)
        if width != self._drawn_width:
            self._drawn.clear()
            self._drawn_width = width
        key = self._keys[row]
        strip = self._drawn.get(key)
        if strip is None:
            if len(self._drawn) >= _CACHE_LIMIT:
                self._drawn.clear()
            strip = Visual.to_strips(self, visualize(self, self._lines[row], markup=False),
                                     width, 1, self.visual_style)[0]
            self._drawn[key] = strip
        return strip

    def watch_view(self, view: View | None) -> None:
        if view is None:
            return
        lines = list(self.render_view(view).split("\n"))
        keys = [_key(line) for line in lines]
        old = self._keys
        self._lines, self._keys = lines, keys
        set_virtual_size(self, Size(self.scrollable_content_region.width, len(lines)))
        # Repaint the rows on screen whose content differs; the others are still right.
        top = int(self.scroll_y)
        width = self.size.width
        rows = range(top, top + self.scrollable_content_region.height)
        changed = [r - top for r in rows
                   if (keys[r] if r < len(keys) else None) != (old[r] if r < len(old) else None)]
        if changed and width:
            self.refresh(*(Region(0, y, width, 1) for y in changed))

    def render_view(self, view: View) -> Text:
        raise NotImplementedError


def _key(line: Text) -> tuple:
    """What a line's drawing depends on (Text itself is not hashable)."""
    return line.plain, line.style, tuple(line.spans)

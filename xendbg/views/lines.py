"""Widgets drawn with Textual's Line API: only the lines on screen are ever rendered.

The pfn→mfn panel has one row per guest page (65536 for a 256 MiB guest) and the hypercall log
grows without end; building a widget (or a DataTable row) per entry would cost seconds and
megabytes. A :class:`LineTable` asks its subclass for the cells of row *n* only when row *n* is
visible, so rendering costs the same for 30 rows or a million. It keeps a cursor (keys, mouse)
and a fixed header line. :class:`TextLog` is the same idea for a stream of text (the console),
:class:`TextLine` one line of text.

None of them asks for a layout pass when its content grows: a layout repaints the whole screen,
and while the guest runs that would happen several times a second (the UI thread's time is the
guest's too, through the GIL). They resize their scrollable area in place instead
(:func:`set_virtual_size`).
"""

from __future__ import annotations

from collections import deque

from rich.segment import Segment
from rich.style import Style
from rich.text import Text
from textual.binding import Binding
from textual.events import Click
from textual.geometry import Region, Size
from textual.message import Message
from textual.reactive import reactive
from textual.scroll_view import ScrollView
from textual.strip import Strip
from textual.widget import Widget

Cell = tuple[str, str | None]        # text, and a component class name for its style (or None)


def set_virtual_size(view: ScrollView, size: Size) -> None:
    """Resize a scroll view's content without a layout pass: update the scrollbars (a layout
    happens only if one of them appears or disappears) and repaint the view.

    As Textual's own update (``Widget._scroll_update``), but a scrollbar is repainted only when
    its size or window changes (they are reactive): a view whose height changes leaves its
    horizontal bar alone, and a bar costs as much to draw as a panel's worth of lines."""
    if size == view.virtual_size:
        return
    refresh_bars = getattr(view, "_refresh_scrollbars", None)   # private: without it, a layout
    if refresh_bars is None:
        view.virtual_size = size
        return
    view.set_reactive(Widget.virtual_size, size)
    refresh_bars()
    width, height = view.container_size
    if view.show_vertical_scrollbar and view.styles.scrollbar_size_vertical:
        bar = view.vertical_scrollbar
        bar.window_virtual_size = size.height
        bar.window_size = height - view.scrollbar_size_horizontal
    if view.show_horizontal_scrollbar and view.styles.scrollbar_size_horizontal:
        bar = view.horizontal_scrollbar
        bar.window_virtual_size = size.width
        bar.window_size = width - view.scrollbar_size_vertical
    view.scroll_x = view.validate_scroll_x(view.scroll_x)
    view.scroll_y = view.validate_scroll_y(view.scroll_y)
    view.refresh()


class LineTable(ScrollView, can_focus=True):
    """Subclasses set ``columns`` ((title, width) pairs) and implement :meth:`row_count` and
    :meth:`row_cells`; they call :meth:`rows_changed` when the data changes."""

    COMPONENT_CLASSES = {
        "line-table--header", "line-table--cursor", "line-table--changed", "line-table--error",
        "line-table--dim", "line-table--mark", "line-table--current",
    }
    DEFAULT_CSS = """
    LineTable { background: $surface; }
    LineTable > .line-table--header { text-style: bold; background: $panel; }
    LineTable > .line-table--cursor { background: $accent 40%; }
    LineTable > .line-table--changed { color: $warning; text-style: bold; }
    LineTable > .line-table--error { color: $error; text-style: bold; }
    LineTable > .line-table--dim { color: $text-muted; }
    LineTable > .line-table--mark { color: $error; text-style: bold; }
    LineTable > .line-table--current { color: $success; text-style: bold; }
    """
    BINDINGS = [
        Binding("up", "cursor(-1)", "Up", show=False),
        Binding("down", "cursor(1)", "Down", show=False),
        Binding("pageup", "page(-1)", "Page up", show=False),
        Binding("pagedown", "page(1)", "Page down", show=False),
        Binding("home", "edge(0)", "First", show=False),
        Binding("end", "edge(1)", "Last", show=False),
    ]

    columns: tuple[tuple[str, int], ...] = ()
    cursor: reactive[int] = reactive(0, init=False)

    class CursorMoved(Message):
        """The cursor is on ``row`` now."""

        def __init__(self, table: LineTable, row: int) -> None:
            super().__init__()
            self.table = table
            self.row = row

        @property
        def control(self) -> LineTable:
            return self.table

    def __init__(self, **kw) -> None:
        super().__init__(**kw)
        self._pass_styles: tuple[Style, dict[str, Style]] | None = None
        self._drawn: dict[tuple, Strip] = {}        # drawn rows, by content (see render_line)

    # -- for subclasses -----------------------------------------------------------------------------
    def row_count(self) -> int:
        return 0

    def row_cells(self, row: int) -> list[Cell]:
        return []

    def rows_changed(self) -> None:
        """The number of rows or their content changed: resize and redraw."""
        width = sum(w + 1 for _t, w in self.columns)
        set_virtual_size(self, Size(width, self.row_count() + 1))
        count = self.row_count()
        if count and self.cursor >= count:
            self.cursor = count - 1
        self.refresh()

    # -- cursor ---------------------------------------------------------------------------------------
    def move_cursor(self, row: int, center: bool = False) -> None:
        count = self.row_count()
        if not count:
            return
        row = max(0, min(count - 1, row))
        self.cursor = row
        self._scroll_to_row(row, center)

    def _scroll_to_row(self, row: int, center: bool) -> None:
        visible = max(1, self.scrollable_content_region.height - 1)
        top = int(self.scroll_y)
        if center:
            self.scroll_to(y=max(0, row - visible // 2), animate=False, force=True)
        elif row < top:
            self.scroll_to(y=row, animate=False, force=True)
        elif row >= top + visible:
            self.scroll_to(y=row - visible + 1, animate=False, force=True)

    def watch_cursor(self, old: int, new: int) -> None:
        self.refresh()
        self.post_message(self.CursorMoved(self, new))

    def action_cursor(self, delta: int) -> None:
        self.move_cursor(self.cursor + delta)

    def action_page(self, direction: int) -> None:
        self.move_cursor(self.cursor + direction * max(1, self.scrollable_content_region.height - 2))

    def action_edge(self, end: int) -> None:
        self.move_cursor(self.row_count() - 1 if end else 0)

    def on_click(self, event: Click) -> None:
        if event.y >= 1:
            self.move_cursor(int(self.scroll_y) + event.y - 1)

    # -- drawing -------------------------------------------------------------------------------------
    # The styles are looked up once per render pass (render_lines), not per line or cell: the
    # widget's own style is computed from the CSS on every call. Drawn rows are kept by content
    # (cells, cursor, the styles, the scroll and width): a live refresh that shows the same rows,
    # or rows that only moved, does not draw them again.
    def render_lines(self, crop: Region) -> list[Strip]:
        self._pass_styles = None
        return super().render_lines(crop)

    def _styles(self) -> tuple[Style, dict[str, Style]]:
        styles = self._pass_styles
        if styles is None:
            styles = self._pass_styles = (
                self.rich_style, {cls: self.get_component_rich_style(cls)
                                  for cls in self.COMPONENT_CLASSES})
        return styles

    def _cells_strip(self, cells: list[Cell], base: Style, components: dict[str, Style],
                     row_style: Style | None) -> Strip:
        segments = []
        for (text, cls), (_title, width) in zip(cells, self.columns, strict=False):
            style = base + components[cls] if cls else base
            if row_style is not None:
                style = style + row_style
            shown = (text if len(text) <= width else text[:width - 1] + "…").ljust(width) + " "
            segments.append(Segment(shown, style))
        return Strip(segments)

    def render_line(self, y: int) -> Strip:
        scroll_x, scroll_y = self.scroll_offset
        width = self.size.width
        base, components = self._styles()
        if y == 0:
            cells = [(t, None) for t, _w in self.columns]
            cursor = False
        else:
            row = scroll_y + y - 1
            if row >= self.row_count():
                return Strip.blank(width, base)
            cells = self.row_cells(row)
            cursor = row == self.cursor
        key = (tuple(cells), y == 0, cursor, base, scroll_x, width, self.columns)
        drawn = self._drawn
        strip = drawn.get(key)
        if strip is None:
            if y == 0:
                strip = self._cells_strip(cells, base + components["line-table--header"],
                                          components, None)
            else:
                strip = self._cells_strip(cells, base, components,
                                          components["line-table--cursor"] if cursor else None)
            strip = strip.crop_extend(scroll_x, scroll_x + width, base)
            if len(drawn) >= 1024:
                drawn.clear()
            drawn[key] = strip
        return strip


class TextLog(ScrollView, can_focus=True):
    """Lines of text that grow at the end (at most ``max_lines`` kept); follows the end while
    the view is at the end."""

    DEFAULT_CSS = "TextLog { background: $surface; }"

    def __init__(self, max_lines: int = 20_000, **kw) -> None:
        super().__init__(**kw)
        self.lines: deque[str] = deque([""], maxlen=max_lines)
        self._width = 0
        self._follow: bool | None = None     # set while text waits to be drawn: was at the end

    def write(self, text: str, draw: bool = True) -> None:
        """Add ``text``; with ``draw=False`` (the log is not on screen) it is only kept, and
        drawn by the next :meth:`redraw` — a hidden widget asking for a repaint makes Textual
        rebuild its whole map of the screen."""
        if self._follow is None:
            self._follow = self.scroll_y >= self.max_scroll_y
        parts = text.split("\n")
        self.lines[-1] += parts[0]
        self.lines.extend(parts[1:])
        self._width = max(self._width, *(len(p) for p in parts))
        if draw:
            self.redraw()

    def redraw(self) -> None:
        """Draw what :meth:`write` kept (nothing to do if it drew it already)."""
        if self._follow is None:
            return
        at_end, self._follow = self._follow, None
        set_virtual_size(self, Size(self._width, len(self.lines)))
        self.refresh()
        if at_end:
            self.scroll_to(y=max(0, len(self.lines) - self.scrollable_content_region.height),
                           animate=False, force=True)

    def render_line(self, y: int) -> Strip:
        scroll_x, scroll_y = self.scroll_offset
        row = scroll_y + y
        width = self.size.width
        base = self.rich_style
        if row >= len(self.lines):
            return Strip.blank(width, base)
        return Strip([Segment(self.lines[row], base)]).crop_extend(scroll_x, scroll_x + width,
                                                                     base)


class TextLine(Widget):
    """One line of text; changing it repaints the line only."""

    DEFAULT_CSS = "TextLine { height: 1; }"

    def __init__(self, text: str = "", **kw) -> None:
        super().__init__(**kw)
        self._text = text

    @property
    def text(self) -> str:
        return self._text

    def set(self, text: str) -> None:
        if text != self._text:
            self._text = text
            self.refresh()

    def render(self) -> Text:
        return Text(self._text, no_wrap=True, overflow="ellipsis")

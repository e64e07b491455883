"""The base of the panels that render a whole view as one Rich renderable."""

from __future__ import annotations

from rich.console import RenderableType
from rich.text import Text
from textual.reactive import reactive
from textual.widget import Widget

from xendbg.messages import View


class SnapshotPanel(Widget):
    """Set ``view`` (screen → panel); :meth:`render_view` turns it into a renderable.

    While the guest runs, a new view only repaints the panel: a layout pass over the whole screen
    for every live refresh would cost the UI thread (and, through the GIL, the guest) far more than
    drawing a few lines. At a stop the panel is laid out again, so its height fits what it shows.
    """

    DEFAULT_CSS = "SnapshotPanel { height: auto; }"
    view: reactive[View | None] = reactive(None, init=False, repaint=False)
    EMPTY = "waiting for the machine…"

    def __init__(self, **kw) -> None:
        super().__init__(**kw)
        self._renderable: RenderableType = Text(self.EMPTY, style="dim")

    def render(self) -> RenderableType:
        return self._renderable

    def watch_view(self, view: View | None) -> None:
        if view is not None:
            self._renderable = self.render_view(view)
            self.refresh(layout=not view.live)

    def render_view(self, view: View) -> RenderableType:
        raise NotImplementedError

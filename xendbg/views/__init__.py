"""The TUI's panels (one module each), its screens, and the driver that runs the machine for them.

Attributes down, messages up: a screen sets each panel's ``view`` (an immutable
:class:`xendbg.messages.View`); a panel posts a message when the user asks for something. Only the
screen talks to its driver, which alone touches the machine: a :class:`~xendbg.views.driver.Driver`
run in a process of its own by :class:`~xendbg.views.engine.EngineProcess` (or in a thread).
"""

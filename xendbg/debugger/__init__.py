"""The debugger session layer: run control, breakpoints, stepping, symbols, one command language.

``Session(machine, symbols)`` is the API both front ends use (``xendbg run --script`` and the TUI);
``symbols_for_image(image)`` finds the guest's symbols; ``run_script`` drives a session from a file.
"""

from xendbg.debugger.memview import DebugError
from xendbg.debugger.session import CommandResult, Session, Stop
from xendbg.debugger.symbols import SymbolError, SymbolTable, symbols_for_image

__all__ = ["Session", "Stop", "CommandResult", "DebugError", "SymbolTable", "SymbolError",
           "symbols_for_image"]

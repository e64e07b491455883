"""Hot paths with a compiled (Cython) implementation and a pure-Python twin.

Each ``<name>.py`` selector takes its names (:func:`export_twin`) from the module
:func:`load_twin` chooses: ``_<name>_c`` when it was built and ``XENDBG_PURE_PYTHON`` is not set,
else ``_<name>_py``. Docstrings live on the Python twin; one test suite runs against both.
"""

import importlib
import os
from types import ModuleType

PURE_PYTHON = bool(os.environ.get("XENDBG_PURE_PYTHON"))


def load_twin(name: str) -> tuple[ModuleType, str]:
    """The implementation of ``name`` to use, and which it is (``"cython"`` or ``"python"``).

    One place decides for every selector, so a selector cannot export a different set of names in
    the compiled and the fallback case: each takes all of its ``__all__`` from the module returned.
    """
    if not PURE_PYTHON:
        try:
            return importlib.import_module(f"xendbg.fast._{name}_c"), "cython"
        except ImportError:                   # not built here (no compiler): the twin serves
            pass
    return importlib.import_module(f"xendbg.fast._{name}_py"), "python"


def export_twin(name: str, namespace: dict) -> str:
    """Fill a selector's ``namespace`` with every name of its ``__all__`` (but
    ``IMPLEMENTATION``) from the module :func:`load_twin` chose; return which it is."""
    module, kind = load_twin(name)
    namespace.update((n, getattr(module, n)) for n in namespace["__all__"]
                     if n != "IMPLEMENTATION")
    return kind

"""Hot paths with a compiled (Cython) implementation and a pure-Python twin.

Each ``<name>.py`` selector imports ``_<name>_c`` when it was built and ``XENDBG_PURE_PYTHON`` is not
set, else ``_<name>_py``. Docstrings live on the Python twin; one test suite runs against both.
"""

import os

PURE_PYTHON = bool(os.environ.get("XENDBG_PURE_PYTHON"))

"""Build the optional Cython fast path.

Every compiled module in xendbg/fast has a pure-Python twin, so a machine with no C compiler (or no
Cython) still installs a working xendbg: the extension build is attempted and its failure is reported,
not fatal.
"""
import os
import sys

from setuptools import setup
from setuptools.command.build_ext import build_ext


class OptionalBuildExt(build_ext):
    def run(self):
        try:
            super().run()
        except Exception as exc:  # noqa: BLE001 - any build failure falls back to the twins
            sys.stderr.write(f"xendbg: fast path not built ({exc}); using the pure-Python twins\n")

    def build_extension(self, ext):
        try:
            super().build_extension(ext)
        except Exception as exc:  # noqa: BLE001
            sys.stderr.write(f"xendbg: {ext.name} not built ({exc}); using its pure-Python twin\n")


def extensions():
    if os.environ.get("XENDBG_PURE_PYTHON"):
        return []
    try:
        from Cython.Build import cythonize
    except ImportError:
        return []
    import glob

    built = []
    for source in sorted(glob.glob("xendbg/fast/_*_c.pyx")):
        try:
            built.extend(cythonize([source], language_level=3, quiet=True))
        except Exception as exc:  # noqa: BLE001 - a module that does not translate keeps its twin
            sys.stderr.write(f"xendbg: {source} not translated ({exc}); using its pure-Python twin\n")
    return built


setup(ext_modules=extensions(), cmdclass={"build_ext": OptionalBuildExt})

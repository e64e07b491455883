"""xendbg: a debugger that owns an emulated Xen machine and boots real Xen PV guests."""

__version__ = "0.1.0"

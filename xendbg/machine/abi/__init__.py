"""Guest-visible layouts and constants of the Xen PV ABI, and nothing else.

Everything here is a fact of the interface (``/usr/include/xen/``), not of xendbg's implementation:
mechanism modules import from this package; it imports nothing from them.
"""

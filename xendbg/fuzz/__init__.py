"""Robustness harnesses: the guest (and the files it comes from) are untrusted input.

Two fuzzers, both reproducible from a seed, both usable from the command line
(``python -m xendbg.fuzz hypercalls|files``), from the tests (short forms) and from ``bench/``
(long forms, with rates):

* :mod:`xendbg.fuzz.hypercalls` boots a lab guest, then makes the guest itself execute random
  hypercalls — every number 0–63, random arguments, pointers into mapped, unmapped, read-only and
  Xen-owned memory, random structures, multicalls of all of these — through the real trap
  instruction (``syscall`` / ``int $0x82``, and sometimes through the hypercall page), and checks
  the machine's invariants after each one (:mod:`xendbg.fuzz.invariants`).
* :mod:`xendbg.fuzz.files` mutates the headers of every kernel format the loader accepts (ELF32/64
  headers, program headers, notes, ``__xen_guest``, bzImage, gzip/xz/lz4 streams) and checks that
  each case ends in a one-line :class:`ImageError`/:class:`BuildError` or a successful build.

Nothing here is imported by ``xendbg.machine``.
"""

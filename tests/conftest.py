"""Shared pytest fixtures. Each block says who uses it; add yours below with a short comment."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

# -- debian_guest: real Xen PV guests from Debian, fetched once into the xendbg cache --------------
# debian_guest("linux-cloud") -> Path of the loadable image. Outside CI a guest that cannot be
# fetched (no apt, no network) skips the test with the reason; in CI (CI=true) it fails it.
# Already-downloaded .debs in /tmp/debs (or $XENDBG_DEB_DIR) are used first, to save time.


@pytest.fixture(scope="session")
def debian_guest() -> Callable[[str], Path]:
    from xendbg.guests import GuestError, fetch

    env = os.environ.get("XENDBG_DEB_DIR")
    deb_dirs = env.split(os.pathsep) if env else [d for d in ("/tmp/debs",) if os.path.isdir(d)]
    fetched: dict[str, Path] = {}
    failed: dict[str, str] = {}

    def get(name: str) -> Path:
        if name not in fetched and name not in failed:
            try:
                fetched[name] = fetch(name, progress=lambda msg: None, deb_dirs=deb_dirs)
            except GuestError as e:
                failed[name] = str(e)
        if name in failed:
            reason = f"cannot fetch Debian guest {name}: {failed[name]}"
            if os.environ.get("CI") == "true":
                pytest.fail(reason)
            pytest.skip(reason)
        return fetched[name]

    return get


# -- lab_machine: a built (not yet started) machine for one of xendbg's own lab guests -------------
# lab_machine("hello-pv64") -> xendbg.machine.machine.Machine; used by the builder, hypercall and
# machine tests. Each call builds a fresh machine.


@pytest.fixture
def lab_machine():
    from xendbg.guests import lab_image
    from xendbg.machine.builder import BuildConfig
    from xendbg.machine.loader import load_kernel
    from xendbg.machine.machine import Machine

    def make(name: str, memory_mib: int = 16, cmdline: str = "", **kw) -> Machine:
        return Machine(load_kernel(lab_image(name)),
                       BuildConfig(memory_mib=memory_mib, cmdline=cmdline, **kw))

    return make


# -- scratch_va: a writable, otherwise unused guest page of a built machine (for hypercall args) ---
# scratch_va(m) -> VA of a page in the start-of-day padding, mapped read-write, after the stack.


@pytest.fixture
def scratch_va():
    def get(m) -> int:
        stack = next(r for r in m.layout.regions if r.name == "boot stack")
        return stack.va + (stack.pages << 12) + 0x1000

    return get

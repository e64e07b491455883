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


# -- run_lab: run a lab guest in-process, collecting its console output -------------------------
# run_lab("mmu-pv64", listeners=[fn], max_insns=N) -> LabRun(reason, output, machine). Each listener
# gets every machine Event as it happens (e.g. an invariant checker on "hypercall" events).
# Used by tests/test_lab_guests.py (the mmu/events lab guests).


@pytest.fixture
def run_lab(lab_machine):
    from dataclasses import dataclass

    @dataclass
    class LabRun:
        reason: str
        output: str
        machine: object

    def run(name: str, listeners=(), max_insns: int = 50_000_000, **kw) -> LabRun:
        m = lab_machine(name, **kw)
        chunks: list[bytes] = []
        m.listeners.append(lambda ev: chunks.append(ev.data["data"]) if ev.kind == "console"
                           else None)
        m.listeners.extend(listeners)
        reason = m.run(max_insns=max_insns)
        return LabRun(reason, b"".join(chunks).decode("utf-8", "replace"), m)

    return run


# -- mmu_kit: drive the PV MMU of a built lab machine from tests (the tests/test_mmu*.py files) -----
# kit = mmu_kit("hello-pv64"); kit.mmu_update([(ptr, val), ...]) -> (rc, done); kit.mmuext(...);
# kit.uvm(va, pte, flags); kit.path(va) -> [(level, table mfn, index), ...]; kit.spare(n) -> unmapped
# frames of the domain; kit.check() -> the invariant checker's violations. Hypercalls go through
# m.dispatch, so listeners see them as if the guest had made them.


@pytest.fixture
def mmu_kit(lab_machine, scratch_va):
    import struct

    from xendbg.machine.abi import xen as X

    class Kit:
        def __init__(self, name: str, **kw) -> None:
            self.m = m = lab_machine(name, **kw)
            self.is64 = m.is64
            self.word = m.abi.word
            self.scratch = scratch_va(m)
            self.arg_va = self.scratch                # request lists go here
            self.done_va = self.scratch + 0xF00       # the ``done`` counter
            self.data_va = self.scratch + 0xC00       # small structures
            self._spare_pfn = m.domain.nr_pages - 1

        def hc(self, name: str, *args: int) -> int:
            nr = getattr(X, f"HYPERVISOR_{name}")
            result = self.m.dispatch(nr, list(args), self.m.cpu.ip)
            mask = (1 << (8 * self.word)) - 1
            return result if result < 0 else result & mask

        def mmu_update(self, reqs, foreigndom: int = X.DOMID_SELF, count: int | None = None):
            data = b"".join(struct.pack("<QQ", p, v) for p, v in reqs)
            assert self.m.guest.write(self.arg_va, data)
            self.m.guest.write_u32(self.done_va, 0)
            rc = self.hc("mmu_update", self.arg_va, len(reqs) if count is None else count,
                         self.done_va, foreigndom)
            return rc, self.m.guest.read_u32(self.done_va)

        def mmuext(self, ops, foreigndom: int = X.DOMID_SELF):
            fmt = "<I4xQQ" if self.is64 else "<III"
            data = b"".join(struct.pack(fmt, cmd, a1, a2) for cmd, a1, *rest in ops
                            for a2 in [rest[0] if rest else 0])
            assert self.m.guest.write(self.arg_va, data)
            self.m.guest.write_u32(self.done_va, 0)
            rc = self.hc("mmuext_op", self.arg_va, len(ops), self.done_va, foreigndom)
            return rc, self.m.guest.read_u32(self.done_va)

        def uvm(self, va: int, pte: int, flags: int = 0) -> int:
            if self.is64:
                return self.hc("update_va_mapping", va, pte, flags)
            return self.hc("update_va_mapping", va, pte & 0xFFFFFFFF, pte >> 32, flags)

        def path(self, va: int):
            """(level, table mfn, index) from the top table down, as far as entries are present."""
            m = self.m
            levels = m.abi.page_levels
            shifts = (39, 30, 21, 12) if levels == 4 else (30, 21, 12)
            mfn = m.vcpu.guest_table
            out = []
            for depth, shift in enumerate(shifts):
                idx = (va >> shift) & (3 if levels == 3 and depth == 0 else 511)
                out.append((levels - depth, mfn, idx))
                entry = m.memory.read_u64((mfn << 12) + idx * 8)
                if not entry & 1:
                    break
                mfn = (entry & 0x000FFFFFFFFFF000) >> 12
            return out

        def entry_ma(self, va: int, level: int) -> int:
            for lvl, mfn, idx in self.path(va):
                if lvl == level:
                    return (mfn << 12) + idx * 8
            raise AssertionError(f"no L{level} table on the way to {va:#x}")

        def spare(self, n: int = 1) -> list[int]:
            """Frames of the domain that nothing maps (from the top of its pseudo-physical space)."""
            out = []
            for _ in range(n):
                out.append(int(self.m.domain.p2m[self._spare_pfn]))
                self._spare_pfn -= 1
            return out

        def free_va(self) -> int:
            """A VA after the start-of-day mapping, in an L2 slot with no L1 yet."""
            return self.m.layout.mapped_end_va + 0x200000

        def check(self):
            from xendbg.machine.mmu.invariants import check
            return check(self.m)

    return Kit


# -- tui: the Textual app on a guest, and waiting for it (tests/test_tui_*.py) ----------------------
# tui.app("demo") -> XendbgApp (wall-clock speed hidden, so screenshots are stable);
# await tui.wait(pilot, lambda: ..., timeout) polls between frames until the condition holds;
# await tui.loaded(pilot) waits for the machine and the first stop.


@pytest.fixture
def tui():
    from xendbg.app import XendbgApp
    from xendbg.runner import RunOptions

    class Tui:
        @staticmethod
        def app(kernel: str = "demo", memory: int | None = 64) -> XendbgApp:
            return XendbgApp(RunOptions(kernel=kernel, memory=memory), show_speed=False)

        @staticmethod
        async def wait(pilot, condition, timeout: float = 60.0) -> None:
            import time
            end = time.monotonic() + timeout
            while not condition():
                if time.monotonic() > end:
                    raise AssertionError("timed out waiting for the TUI")
                await pilot.pause(0.02)

        async def loaded(self, pilot) -> None:
            await self.wait(pilot, lambda: getattr(pilot.app.screen, "stops", 0) >= 1)

        async def stopped(self, pilot, stops: int) -> None:
            """Wait until the screen has shown ``stops`` stops and the guest is not running."""
            screen = pilot.app.screen
            await self.wait(pilot, lambda: screen.stops >= stops and not screen.running)
            await pilot.pause(0.05)

    return Tui()


# Shared by the trap, event-channel and regression tests: run a lab guest up to its first
# hypercall, so that the CPU holds guest state (segments, rings) before a test pokes at it.
def _enter_guest(m) -> None:
    def stop_at_hypercall(event):
        if event.kind == "hypercall":
            m.request_stop()

    m.listeners.append(stop_at_hypercall)
    assert m.run(max_insns=100_000) == "stop"
    m.listeners.remove(stop_at_hypercall)


@pytest.fixture
def enter_guest():
    """``enter_guest(m)``: run ``m`` to its first hypercall."""
    return _enter_guest

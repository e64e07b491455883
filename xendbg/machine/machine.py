"""The emulated Xen machine: one PV domain with one vCPU, the hypervisor serving it, its backends.

``Machine`` wires the parts together and owns the run loop. Guest code runs inside
``Uc.emu_start``; control comes back to Python only through hooks — a hypercall (``syscall`` or
``int $0x82``), an exception, a forced-emulation CPUID, the block counter (budget or pause) — and
every hook body is guarded: a Python exception in xendbg's own code crashes the *domain* with an
"internal error" reason (and is kept in ``internal_errors`` for tests and the fuzzer); it never
unwinds through Unicorn.

Structured events go to subscribers (``listeners``): ``hypercall_entry`` (before the handler runs),
``hypercall`` (after it), ``console``, ``trap``, ``upcall``, ``shutdown``, ``crash``, and ``tick``
(every ``tick_interval`` instructions, when set). The machine never prints. A listener that only
cares for some kinds says so with an ``event_kinds`` attribute (a set of kinds); the machine then
neither calls it for the others nor builds an event nobody receives — a hypercall-heavy guest makes
two events per call, and most listeners want neither. ``hypercall:NAME`` among the kinds asks for
the ``hypercall`` events of that one call (a debugger keeping the history of the frames that
``mmu_update`` names need not hear of every ``console_io``).
"""

from __future__ import annotations

import threading
import traceback
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import capstone
from unicorn import UC_HOOK_CODE, UC_HOOK_MEM_READ, UC_HOOK_MEM_WRITE, UC_MEM_WRITE, UcError
from unicorn import x86_const as U

from xendbg.fast.blockhook import STOP_BUDGET, STOP_REQUEST, BlockCounter
from xendbg.machine import hypercalls, priv
from xendbg.machine.abi import xen as X
from xendbg.machine.abi.errno import EFAULT, EINVAL, ENOSYS, errno_name
from xendbg.machine.builder import BuildConfig, build_domain
from xendbg.machine.clock import Clock
from xendbg.machine.console import Console
from xendbg.machine.cpu import CR0_ET, CR0_MP, CR0_NE, CR0_PE, CR0_PG, CR0_WP, Cpu
from xendbg.machine.domain import Shutdown, Vcpu
from xendbg.machine.emul_priv import CpuidRegs
from xendbg.machine.events.evtchn import EventChannels
from xendbg.machine.events.evtchn_2l import Evtchn2L
from xendbg.machine.grant_table import GrantTable
from xendbg.machine.guestmem import GuestMemory
from xendbg.machine.iret import NO_RESULT
from xendbg.machine.memory import PAGE_SHIFT
from xendbg.machine.mmu import Mmu
from xendbg.machine.multicall import Multicalls
from xendbg.machine.traps import ERROR_CODE_VECTORS, TrapBouncer
from xendbg.machine.xenarea import GDT_LIMIT, RING0_CS_32, RING0_DS
from xendbg.machine.xenstore import XenStore
from xendbg.machine.xenstore_ring import BytearrayPage, XenStoreRing

CR0_TS = 1 << 3
DEFERRED = object()       # dispatch(): a debugger stopped at the entry; the call has not run
XEN_CPUID_PREFIX = b"\x0f\x0bxen\x0f\xa2"


class Event:
    """One machine event: its kind, the instruction count, and its fields.

    A plain slotted class rather than a frozen dataclass: one is built per hypercall twice over
    while anyone listens, and a frozen dataclass's ``__init__`` costs three times as much.
    Treat it as read-only.
    """

    __slots__ = ("kind", "insns", "data")

    def __init__(self, kind: str, insns: int, data: dict) -> None:
        self.kind = kind
        self.insns = insns
        self.data = data

    def __repr__(self) -> str:
        return f"Event(kind={self.kind!r}, insns={self.insns!r}, data={self.data!r})"

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not Event:
            return NotImplemented
        return (self.kind, self.insns, self.data) == (other.kind, other.insns, other.data)

    __hash__ = None      # type: ignore[assignment]  # data is a dict, as with the dataclass


class Listeners(list):
    """The machine's subscribers: a list that tells the machine when it changes, so that the
    per-kind routing (:meth:`Machine.route`) is computed once per change, not once per event."""

    __slots__ = ("_changed",)

    def __init__(self, changed: Callable[[], None], items=()) -> None:
        super().__init__(items)
        self._changed = changed


def _notifying(name: str):
    base = getattr(list, name)

    def method(self, *args):
        result = base(self, *args)
        self._changed()
        return result

    method.__name__ = name
    return method


for _name in ("append", "extend", "insert", "remove", "pop", "clear", "sort", "reverse",
              "__setitem__", "__delitem__", "__iadd__", "__imul__"):
    setattr(Listeners, _name, _notifying(_name))


def _wants(listener, kind: str, also: str | None = None) -> bool:
    kinds = getattr(listener, "event_kinds", None)
    return kinds is None or kind in kinds or (also is not None and also in kinds)


@dataclass
class HypercallStats:
    calls: Counter = field(default_factory=Counter)
    errors: Counter = field(default_factory=Counter)
    unimplemented: Counter = field(default_factory=Counter)


class Machine:
    """Build the domain for ``image`` and prepare its vCPU to enter the guest."""

    def __init__(self, image, config: BuildConfig | None = None) -> None:
        self.image = image
        self.config = config or BuildConfig()
        self.memory, self.domain, self.layout = build_domain(image, self.config)
        self.abi = self.domain.abi
        self.is64 = self.abi.bits == 64
        self.vcpu: Vcpu = self.domain.vcpus[0]
        self.xen_area = self.layout.xen
        self.cpu = Cpu(self.abi, self.memory)
        # Bound once: the hypercall path runs them on every call.
        self._read_hcall = self.cpu.hcall.read
        self._read_hcall_cs = self.cpu.hcall_cs.read
        self._write_ax = self.cpu.write_ax
        self.guest = GuestMemory(self.memory, self.abi, lambda: self.cpu.cr3)
        self.traps = TrapBouncer(self)
        self._routes: dict[str, tuple] = {}        # event kind → the listeners that get it
        self._call_routes: dict[str, tuple] = {}   # hypercall name → who gets its exit event
        self._routes_lock = threading.Lock()      # a listener may be added from another thread
        self._listeners = Listeners(self._listeners_changed)
        self.stats = HypercallStats()
        self.internal_errors: list[str] = []
        self.cpuid = priv.CpuidPolicy()
        self.blocked_forever = False
        # While running, emit a ``tick`` event every this many instructions (0: never). The TUI
        # refreshes its panels from it, on the emulator thread between two blocks; headless runs
        # leave it 0, so they are not cut into more slices than their timers need.
        self.tick_interval = 0
        self._stop_reason: str | None = None
        self._in_syscall_hook = False
        self._defer_hypercall = False      # set by stop_before_hypercall() during hypercall_entry
        self._emu_thread: int | None = None
        self._word_mask = (1 << self.abi.bits) - 1
        self._bits = self.abi.bits
        self._md = capstone.Cs(capstone.CS_ARCH_X86,
                               capstone.CS_MODE_64 if self.is64 else capstone.CS_MODE_32)

        d = self.domain
        self.evtchn = EventChannels(self, Evtchn2L(self.memory, self.abi,
                                                   d.shared_info_mfn << PAGE_SHIFT))
        self.console = Console(self.memory, d.console_mfn << PAGE_SHIFT, self._console_output,
                               lambda: self.evtchn.notify_backend_event("console"))
        self.evtchn.connect_backend(d.store_evtchn, "xenstore", self._xenstore_notify)
        self.evtchn.connect_backend(d.console_evtchn, "console", self._console_notify)
        self.xenstore = XenStore()
        self.xenstore.populate_domain(
            d.domid, self.config.name, d.nr_pages * 4, len(d.vcpus), d.console_evtchn,
            d.console_mfn, d.store_evtchn, d.store_mfn, cmdline=self.config.cmdline,
            kernel=str(getattr(image, "path", "")))
        self.xenstore_ring = XenStoreRing(self.xenstore, d.domid,
                                          BytearrayPage(self.memory.frame(d.store_mfn)))

        self.counter = BlockCounter(self.cpu.uc, self._icount_of)
        self.counter.install()
        self.clock = Clock(self)
        self.mmu = Mmu(self)
        self.grant_table = GrantTable(self)
        self.multicalls = Multicalls()
        self._setup_cpu()

    # -- CPU set-up ----------------------------------------------------------------------------
    def _setup_cpu(self) -> None:
        cpu, abi, area = self.cpu, self.abi, self.xen_area
        cpu.setup_paging(self.layout.pt_base_mfn << PAGE_SHIFT, area.gdt_va, GDT_LIMIT)
        cpu.prepare_entry(
            trampoline_va=area.trampoline_va, stack_va=area.stack_va, stack_ma=area.stack_ma,
            ring0_cs=RING0_CS_32, ring0_ds=RING0_DS, rip=self.layout.entry, cs=abi.kernel_cs,
            rflags=1 << 9 | 2, rsp=self.layout.stack_top, ss=abi.kernel_ss,
            data_sel=abi.kernel_ds)
        si = self.layout.start_info_va
        if self.is64:
            cpu.uc.reg_write(U.UC_X86_REG_RSI, si)
            cpu.hook_syscall(self._on_syscall)
        else:
            cpu.uc.reg_write(U.UC_X86_REG_ESI, si)
        cpu.hook_intr(self._on_intr)
        cpu.hook_invalid(self._on_invalid)
        self._cpuid_regs = CpuidRegs(cpu)
        cpu.hook_cpuid(self._on_cpuid)
        cpu.hook_in_out(self._on_in, self._on_out)
        self.clock.hook_rdtsc(cpu)           # rdtsc/rdtscp read the virtual TSC

    # -- events to subscribers -----------------------------------------------------------------
    @property
    def listeners(self) -> list[Callable[[Event], None]]:
        return self._listeners

    @listeners.setter
    def listeners(self, items) -> None:
        self._listeners = Listeners(self._listeners_changed, items)
        self._listeners_changed()

    def _listeners_changed(self) -> None:
        with self._routes_lock:
            self._routes.clear()
            self._call_routes.clear()

    def reroute(self) -> None:
        """A listener changed its ``event_kinds``: route events anew from the next one on."""
        self._listeners_changed()

    def route(self, kind: str) -> tuple:
        """The listeners that get events of ``kind``, in order (empty: nobody; build nothing)."""
        targets = self._routes.get(kind)
        if targets is None:
            # Under the lock, so that a change made meanwhile is not overwritten with a stale list.
            with self._routes_lock:
                targets = tuple(f for f in self._listeners if _wants(f, kind))
                self._routes[kind] = targets
        return targets

    def route_call(self, name: str) -> tuple:
        """The listeners that get the ``hypercall`` (exit) events of the call ``name``."""
        targets = self._call_routes.get(name)
        if targets is None:
            with self._routes_lock:
                targets = tuple(f for f in self._listeners
                                if _wants(f, "hypercall", "hypercall:" + name))
                self._call_routes[name] = targets
        return targets

    def emit(self, kind: str, **data) -> None:
        targets = self._routes.get(kind)
        if targets is None:
            targets = self.route(kind)
        if targets:
            # The tuple is a snapshot: a listener added or removed by a listener takes effect
            # from the next event on.
            event = Event(kind, self.counter.insns, data)
            for listener in targets:
                listener(event)

    # -- run control ---------------------------------------------------------------------------
    @property
    def insns(self) -> int:
        return self.counter.insns

    def read_tsc(self) -> int:
        return self.clock.tsc()

    def run(self, max_insns: int | None = None) -> str:
        """Run until something stops the machine; return why.

        Reasons: ``shutdown``, ``crash``, ``blocked`` (waiting with nothing to wake it),
        ``budget`` (``max_insns`` executed), ``pause`` (:meth:`pause` from another thread),
        ``stop`` (a listener asked, e.g. ``--until`` matched).

        A budget or a pause stops at the first block boundary at or after it (``max_insns`` is
        overshot to the end of the block it falls in); the block the stop comes before is neither
        run nor counted. So cutting a run into any slices changes no count, time or event
        (``fast/_blockhook_py.py``, tests/test_time_slicing.py).
        """
        if self.domain.dying:
            return "crash" if self.domain.crashed else "shutdown"
        self._stop_reason = None
        self.counter.stop_reason = 0        # a pending pause request stays pending
        user_budget = self.counter.insns + max_insns if max_insns else 0
        self._emu_thread = threading.get_ident()
        try:
            while self._stop_reason is None:
                deadline = self.clock.next_deadline()
                tick = self.counter.insns + self.tick_interval if self.tick_interval else 0
                budgets = [b for b in (user_budget, deadline, tick) if b]
                self.counter.budget = min(budgets) if budgets else 0
                begin = self.cpu.ip
                try:
                    self.cpu.start(begin, self.xen_area.until_va)
                except UcError as exc:
                    if self._stop_reason is None:
                        self.crash(f"the CPU stopped with {exc} at {self.cpu.ip:#x}")
                    break
                if self._stop_reason is not None:
                    break
                reason = self.counter.stop_reason
                if reason == STOP_REQUEST:
                    self._stop_reason = "pause"
                elif reason == STOP_BUDGET:
                    self.counter.stop_reason = 0
                    if user_budget and self.counter.insns >= user_budget:
                        self._stop_reason = "budget"
                    else:
                        if tick and self.counter.insns >= tick:
                            self.emit("tick")
                        # Only a timer's deadline is a point where Xen looks for events; a tick
                        # must not deliver one earlier than a run without ticks would. (Asked
                        # again: a hypercall in the slice may have armed an earlier timer.)
                        due = self.clock.next_deadline()
                        if not tick or (due and self.counter.insns >= due):
                            self.clock.at_slice_boundary()
                            self.check_events()
                else:
                    self.crash(f"the CPU stopped unexpectedly at {self.cpu.ip:#x} "
                               "(a triple fault?)")
        finally:
            self._emu_thread = None
        return self._stop_reason or "stop"

    def pause(self) -> None:
        """Ask a running machine to stop at the next block boundary (safe from any thread)."""
        self.counter.request_stop()

    def request_stop(self, reason: str = "stop") -> None:
        """Stop from inside the emulator thread (a hook or a listener called by one)."""
        if self._stop_reason is None:
            self._stop_reason = reason
        if self._emu_thread == threading.get_ident():
            self.cpu.stop()
        else:
            self.counter.request_stop()

    # -- debugger support: stop at a hypercall's entry, breakpoints, watchpoints, one step ------
    def stop_before_hypercall(self) -> None:
        """Called by a ``hypercall_entry`` listener: stop with the call not made (run() returns
        ``hypercall-entry``; resuming makes it). Ignored for the entries of a multicall batch."""
        self._defer_hypercall = True

    def add_code_hook(self, va: int, callback: Callable[[int], None]) -> object:
        """``callback(va)`` runs before the instruction at ``va`` (a breakpoint).

        A code hook bounded to that one address — never a per-instruction hook, which would cost
        ~1000× (UNICORN.md §4). Blocks translated before the hook existed do not call it, hence the
        flush. A stop requested from the callback leaves the guest at ``va``, not yet executed.
        """
        def hook(_uc, address: int, _size: int, _user) -> None:
            try:
                callback(address)
            except Exception:                      # noqa: BLE001 - never unwind into Unicorn
                self._internal_error("a debugger breakpoint")

        handle = self.cpu.uc.hook_add(UC_HOOK_CODE, hook, None, va, va)
        self.cpu.flush_tb()
        return handle

    def add_memory_hook(self, ma: int, length: int, *, write: bool, read: bool,
                        callback: Callable[[str, int, int, int, int], None]) -> object:
        """``callback(kind, ma, size, value, ip)`` for guest accesses to machine range
        [ma, ma+length) (a watchpoint). Unicorn's memory hooks take physical addresses.

        Never stop from inside: an emu_stop there re-executes the access on resume (UNICORN.md §7).
        Ask for a stop with :meth:`pause` instead: it lands at the next block boundary.
        """
        types = (UC_HOOK_MEM_WRITE if write else 0) | (UC_HOOK_MEM_READ if read else 0)

        def hook(_uc, access: int, address: int, size: int, value: int, _user) -> None:
            try:
                callback("write" if access == UC_MEM_WRITE else "read", address, size, value,
                         self.cpu.ip)
            except Exception:                      # noqa: BLE001
                self._internal_error("a debugger watchpoint")

        handle = self.cpu.uc.hook_add(types, hook, None, ma, ma + length - 1)
        self.cpu.flush_tb()
        return handle

    def remove_hook(self, handle: object) -> None:
        self.cpu.uc.hook_del(handle)
        self.cpu.flush_tb()

    def step(self) -> str:
        """Execute one guest instruction (``stepi``); return ``step`` or why the machine stopped.

        ``emu_start(count=1)``: exact, and slow only for this one instruction. The block counter
        adds a whole block's instructions when a block starts, so the count is set to one more
        than before afterwards; due timers are then handled as at a slice boundary.
        """
        if self.domain.dying:
            return "crash" if self.domain.crashed else "shutdown"
        self._stop_reason = None
        self.counter.clear_stop()             # a stale pause request would stop us before it
        budget, self.counter.budget = self.counter.budget, 0
        before = self.counter.insns
        self._emu_thread = threading.get_ident()
        # Unicorn counts with a code hook that only blocks translated after it existed call: drop
        # the blocks cached by a free run (the next free run drops the counting ones in turn).
        self.cpu.flush_tb()
        try:
            self.cpu.uc.emu_start(self.cpu.ip, self.xen_area.until_va, count=1)
        except UcError as exc:
            if self._stop_reason is None:
                self.crash(f"the CPU stopped with {exc} at {self.cpu.ip:#x}")
        finally:
            self._emu_thread = None
            self.counter.budget = budget
        # A hypercall stopped at its entry has not executed its trap instruction yet.
        self.counter.insns = before + (0 if self._stop_reason == "hypercall-entry" else 1)
        self.counter.stop_reason = 0
        if self._stop_reason is None and not self.domain.dying:
            deadline = self.clock.next_deadline()
            if deadline and self.counter.insns >= deadline:
                self.clock.at_slice_boundary()
                self.check_events()
        return self._stop_reason or "step"

    # -- domain life ---------------------------------------------------------------------------
    def shutdown(self, reason: int) -> None:
        name = X.SHUTDOWN_NAMES.get(reason, str(reason))
        self.run_backends()
        self.domain.shutdown = Shutdown(reason, name, self.domain.shutdown_code)
        self.emit("shutdown", reason=name, code=self.domain.shutdown_code)
        self.request_stop("shutdown")

    def crash(self, why: str) -> None:
        if self.domain.crashed is None:
            self.domain.crashed = why
            try:
                self.console.drain_ring()
            except Exception:                      # noqa: BLE001 - the ring may be garbage
                pass
            self.emit("crash", reason=why, ip=self.cpu.ip)
        self._stop_reason = "crash"
        if self._emu_thread == threading.get_ident():
            self.cpu.stop()

    def _internal_error(self, where: str) -> None:
        tb = traceback.format_exc()
        self.internal_errors.append(tb)
        last = tb.strip().splitlines()[-1]
        self.crash(f"xendbg internal error in {where}: {last}")

    # -- helpers for the mechanisms ----------------------------------------------------------
    def set_guest_ip(self, ip: int) -> None:
        """Resume the guest at ``ip`` (Unicorn adds 2 after a syscall hook returns)."""
        if self._in_syscall_hook:
            ip -= 2
        self.cpu.write_plain(self.cpu.ip_reg, ip & self._word_mask)

    def owns_frame(self, mfn: int) -> bool:
        return self.memory.is_valid_mfn(mfn) and int(self.memory.owner[mfn]) == self.domain.domid

    def flush_tlb(self) -> None:
        self.cpu.cr3 = self.cpu.cr3

    def toggle_guest_mode(self, vcpu: Vcpu) -> None:
        """64-bit PV: switch between guest kernel and user mode (page tables and GS base)."""
        vcpu.kernel_mode = not vcpu.kernel_mode
        table = vcpu.guest_table if vcpu.kernel_mode else vcpu.guest_table_user
        self.cpu.cr3 = table << PAGE_SHIFT
        self.load_segment_bases()

    def load_segment_bases(self) -> None:
        if not self.is64:
            return
        v = self.vcpu
        write = self.cpu.write_plain
        write(U.UC_X86_REG_FS_BASE, v.fs_base)
        write(U.UC_X86_REG_GS_BASE, v.gs_base_kernel if v.kernel_mode else v.gs_base_user)

    def set_fpu_ts(self, on: bool) -> None:
        self.vcpu.fpu_ts = on
        cr0 = self.cpu.read_plain(U.UC_X86_REG_CR0)
        self.cpu.write_plain(U.UC_X86_REG_CR0, cr0 | CR0_TS if on else cr0 & ~CR0_TS)

    # -- backends ------------------------------------------------------------------------------
    def _console_output(self, source: str, data: bytes) -> None:
        self.emit("console", source=source, data=data)

    def _console_notify(self, _port: int) -> None:
        self.console.arm_input()
        self.console.drain_ring()

    def _xenstore_notify(self, _port: int) -> None:
        self._run_xenstore()

    def _run_xenstore(self) -> bool:
        if self.xenstore_ring.process():
            self.evtchn.notify_backend_event("xenstore")
            return True
        return False

    def run_backends(self) -> bool:
        """Let the backends catch up (xenconsoled and xenstored run "while the guest yields")."""
        moved = self.console.drain_ring()
        return self._run_xenstore() or moved

    # -- events --------------------------------------------------------------------------------
    def on_event_pending(self, vcpu: Vcpu, port: int) -> None:
        vcpu.blocked = False

    def upcall_pending(self, vcpu: Vcpu) -> bool:
        return bool(self.memory.view[vcpu.vcpu_info_ma])

    def check_events(self) -> None:
        """Xen's ``test_guest_events`` on the way back to the guest: make a due upcall."""
        vcpu = self.vcpu
        if self.domain.dying or not self.upcall_pending(vcpu) or self.traps.upcall_mask(vcpu):
            return
        if self._stop_reason == "hypercall-entry":      # the guest has not made its call yet
            return
        if X.CALLBACKTYPE_event not in vcpu.callbacks:
            return
        listened = self.route("upcall")
        ip = self.cpu.ip if listened else 0          # before the bounce moves it (for the event)
        bounce = self.traps.upcall(vcpu)
        if bounce is not None and listened:
            self.emit("upcall", ip=ip, target=bounce.target,
                      pending=self.evtchn.delivery.pending_ports())

    def block_vcpu(self) -> int:
        """SCHEDOP_block: unmask events; return at once if one is pending, else wait for one."""
        vcpu = self.vcpu
        self.traps.set_upcall_mask(vcpu, 0)
        if self.upcall_pending(vcpu):
            return 0
        self.run_backends()
        if self.upcall_pending(vcpu):
            return 0
        vcpu.blocked = True
        if self.clock.block(vcpu):
            return 0
        self.blocked_forever = True
        self.emit("blocked", ip=self.cpu.ip)
        self.request_stop("blocked")
        return 0

    def poll_vcpu(self, arg: int) -> int:
        word = self.abi.word
        raw = self.guest.read(arg, 2 * word + 8 if self.is64 else 16)
        if raw is None:
            return -EFAULT
        ports_ptr = int.from_bytes(raw[:word], "little")
        nr_ports = int.from_bytes(raw[word:word + 4], "little")
        timeout = int.from_bytes(raw[-8:], "little")      # absolute system time; 0: none
        if nr_ports > 128:
            return -EINVAL
        if self.upcall_pending(self.vcpu) and not self.traps.upcall_mask(self.vcpu):
            return 0                                      # local_events_need_delivery
        ports = []
        for i in range(nr_ports):
            port = self.guest.read_u32(ports_ptr + 4 * i)
            if port is None:
                return -EFAULT
            if port >= self.evtchn.nr_ports:
                return -EINVAL
            ports.append(port)
        for attempt in range(2):
            if any(self.evtchn.delivery.is_pending(p) for p in ports):
                return 0
            if attempt == 0:
                self.run_backends()
        if self.clock.block(self.vcpu, ports, timeout):   # woken by a port, an event, the timeout
            return 0
        self.blocked_forever = True
        self.emit("blocked", ip=self.cpu.ip)
        self.request_stop("blocked")
        return 0

    # -- hooks: hypercalls ---------------------------------------------------------------------
    def _on_syscall(self, uc, _user_data) -> None:
        self._in_syscall_hook = True
        try:
            if not self.vcpu.kernel_mode:
                self._user_syscall()
                return
            vals = self._read_hcall()
            self.hypercall(vals[0], vals[1:7], vals[7])
        except Exception:                          # noqa: BLE001 - never unwind into Unicorn
            self._internal_error("the hypercall path")
        finally:
            self._in_syscall_hook = False

    def _user_syscall(self) -> None:
        """``syscall`` in guest user mode goes to the guest kernel, not to Xen (``switch_to_kernel``).

        The CPU did what SYSCALL does in hardware only partly (Unicorn leaves RCX and R11 alone), so
        RCX gets the return address and R11 the flags, as the guest's entry code expects; Xen then
        switches to kernel mode and bounces to the syscall callback (the 32-bit one for a compat
        code segment), masking events if the callback was registered with CALLBACKF_mask_events.
        """
        read, write = self.cpu.read_plain, self.cpu.write_plain
        vcpu = self.vcpu
        ip = read(U.UC_X86_REG_RIP) + 2
        write(U.UC_X86_REG_RCX, ip)
        write(U.UC_X86_REG_R11, read(U.UC_X86_REG_RFLAGS))
        write(U.UC_X86_REG_RIP, ip)
        compat = read(U.UC_X86_REG_CS) & 0xFFFF == self.abi.user_cs32
        cb = vcpu.callbacks.get(X.CALLBACKTYPE_syscall32 if compat else X.CALLBACKTYPE_syscall)
        if compat and (cb is None or cb.address == 0):
            cb = vcpu.callbacks.get(X.CALLBACKTYPE_syscall)
        if cb is None or cb.address == 0:
            # Xen injects #GP at the syscall when there is no callback.
            write(U.UC_X86_REG_RIP, ip - 2)
            self._trap_event(13, 0)
            self.traps.exception(vcpu, 13, 0)
            return
        if self.route("syscall"):
            self.emit("syscall", ip=ip - 2, nr=read(U.UC_X86_REG_RAX))
        bounce = self.traps.bounce(vcpu, cb.address, kind="syscall",
                                   interrupt=bool(cb.flags & X.CALLBACKF_mask_events))
        if bounce is not None:
            flags = read(U.UC_X86_REG_RFLAGS)
            write(U.UC_X86_REG_RFLAGS, flags & ~(1 << 10))     # DF cleared on entry
        self.check_events()

    def hypercall(self, nr: int, args: list[int], ip: int) -> None:
        """A hypercall trapped at ``ip``: run it, put the result in rAX, deliver due events."""
        result = self.dispatch(nr, args, ip)
        if result is DEFERRED:
            # Stopped at the entry: leave the guest on its trap instruction (syscall: ``ip`` is at
            # it; int $0x82: ``ip`` is after it), so that resuming makes the same call again.
            self.set_guest_ip(ip if self.is64 else ip - 2)
            # The trap instruction ends its block, so resuming counts it once more: take that back
            # and virtual time stays the same as in a run that did not stop.
            self.counter.insns -= 1
            self.request_stop("hypercall-entry")
            return
        if result is not NO_RESULT:
            self._write_ax(result & self._word_mask)
        self.clock.check_timers()           # the timer softirq, on the way back to the guest
        # check_events() does nothing without evtchn_upcall_pending: test that byte here first,
        # as nearly every call returns with nothing pending.
        if self.memory.view[self.vcpu.vcpu_info_ma]:
            self.check_events()

    def dispatch(self, nr: int, args: list[int], ip: int, multicall: int | None = None):
        """Look ``nr`` up in the table and run its handler; return its result (or NO_RESULT).

        ``multicall`` is the entry index when called from a multicall batch (for the trace).
        """
        # The hot path of every guest: one table lookup gives the row resolved for this ABI
        # (hypercalls.HypercallRow), and an event is built only when a listener takes its kind.
        mask = self._word_mask
        nr &= mask
        d = hypercalls.BY_NR.get(nr) if nr < hypercalls.NR_HYPERCALLS else None
        name, handler, nargs, arg_names = (d.rows[self._bits] if d is not None
                                           else hypercalls.row_of(nr, self._bits))
        args = [a & mask for a in args[:nargs]]
        routes = self._routes
        targets = routes.get("hypercall_entry")
        if targets is None:
            targets = self.route("hypercall_entry")
        if targets:
            # Entry, before anything happens: a debugger may ask to stop here (see stop_before_
            # hypercall); only a top-level call can be deferred, not an entry of a batch.
            self._defer_hypercall = False
            event = Event("hypercall_entry", self.counter.insns,
                          {"nr": nr, "name": name, "args": args, "ip": ip, "multicall": multicall,
                           "arg_names": arg_names})
            for listener in targets:
                listener(event)
            if self._defer_hypercall and multicall is None:
                self._defer_hypercall = False
                return DEFERRED
        stats = self.stats
        if handler is None:
            result = -ENOSYS
            stats.unimplemented[name] += 1
        else:
            result = handler(self, *args)
        stats.calls[name] += 1
        if isinstance(result, int) and -4096 < result < 0:
            stats.errors[name] += 1
        # Again (a listener may have changed the set), and per call: some want only a few.
        targets = self._call_routes.get(name)
        if targets is None:
            targets = self.route_call(name)
        if targets:
            shown = None if result is NO_RESULT else result
            event = Event("hypercall", self.counter.insns,
                          {"nr": nr, "name": name, "args": args, "ip": ip, "result": shown,
                           "error": (errno_name(shown) if shown is not None and -4096 < shown < 0
                                     else None),
                           "arg_names": arg_names, "multicall": multicall})
            for listener in targets:
                listener(event)
        return result

    # -- hooks: exceptions -----------------------------------------------------------------------
    def _on_intr(self, uc, intno: int, _user_data) -> None:
        try:
            error_code = self.cpu.exception_entry() if intno < 32 else 0
            self._intr(intno, error_code)
            if not self.domain.dying:
                self.check_events()
        except Exception:                          # noqa: BLE001
            self._internal_error(f"the handler of interrupt {intno:#x}")

    def _intr(self, intno: int, error_code: int) -> None:
        vcpu = self.vcpu
        if intno == 0x82 and not self.is64:
            vals = self._read_hcall_cs()      # the hypercall registers, then CS
            if vals[9] & 3 != 1:
                self.set_guest_ip(vals[7] - 2)
                self.traps.exception(vcpu, 13, (0x82 << 3) | 2)
                return
            self.hypercall(vals[0], vals[1:7], vals[7])
            return
        if intno == 14:
            cr2 = self.cpu.cr2()
            if self.mmu.on_page_fault(vcpu, cr2, error_code):
                return
            error_code = self.mmu.guest_error_code(vcpu, error_code)
            vcpu.cr2 = cr2
            self.memory.write(vcpu.vcpu_info_ma + self.abi.vcpu_cr2,
                              cr2.to_bytes(self.abi.word, "little"))
            self._trap_event(14, error_code)
            self.traps.exception(vcpu, 14, error_code)
            return
        if intno == 13 and self._emulate_privileged_op():
            return
        if intno in (3, 4):
            self._trap_event(intno, None)
            self.traps.exception(vcpu, intno)
            return
        if intno < 32:
            code = error_code if intno in ERROR_CODE_VECTORS else None
            self._trap_event(intno, code)
            self.traps.exception(vcpu, intno, code)
            return
        self._trap_event(intno, None)
        self.traps.software_interrupt(vcpu, intno)

    def _trap_event(self, vector: int, error_code: int | None) -> None:
        if self.route("trap"):
            self.emit("trap", vector=vector, error_code=error_code, ip=self.cpu.ip,
                      cr2=self.vcpu.cr2 if vector == 14 else None)

    def _on_invalid(self, uc, _user_data) -> bool:
        try:
            ip = self.cpu.ip
            code = self.guest.read(ip, len(XEN_CPUID_PREFIX))
            if code == XEN_CPUID_PREFIX:
                self._emulate_cpuid()
                self.cpu.ip = ip + len(XEN_CPUID_PREFIX)
            else:
                self._trap_event(6, None)
                self.traps.exception(self.vcpu, 6)
                if not self.domain.dying:
                    self.check_events()
        except Exception:                          # noqa: BLE001
            self._internal_error("the invalid-opcode handler")
        if self.domain.dying:
            self.cpu.stop()
        return True

    def _emulate_cpuid(self) -> None:
        # Batched register access (emul_priv.CpuidRegs): GRUB's idle loop runs cpuid constantly.
        self._cpuid_regs.emulate(self.cpuid)

    def _on_cpuid(self, uc, _user_data) -> int:
        try:
            self._emulate_cpuid()
        except Exception:                          # noqa: BLE001
            self._internal_error("the CPUID handler")
        return 1

    def _on_in(self, uc, port: int, size: int, _user_data) -> int:
        # No devices: reads float high. Port access with insufficient virtual IOPL would #GP on
        # Xen; Unicorn gives us no clean way to fault here, so the domain is told why it stopped.
        if not self._io_allowed():
            self.crash(f"port I/O (in from {port:#x}) without I/O privilege")
            return 0
        return (1 << (8 * size)) - 1

    def _on_out(self, uc, port: int, size: int, value: int, _user_data) -> None:
        if not self._io_allowed():
            self.crash(f"port I/O (out to {port:#x}) without I/O privilege")

    def _io_allowed(self) -> bool:
        ring = 1 if (self.is64 and self.vcpu.kernel_mode) else self.cpu.cpl()
        return self.vcpu.iopl >= ring

    # -- privileged instructions -----------------------------------------------------------------
    def _emulate_privileged_op(self) -> bool:
        """Emulate what Xen's ``emulate_privileged_op`` would; False → the guest gets #GP."""
        from xendbg.machine.emul_priv import emulate_privileged_op
        return emulate_privileged_op(self)

    # -- instruction accounting --------------------------------------------------------------------
    def _icount_of(self, address: int, size: int) -> int:
        code = self.guest.read(address, size)
        if code is None:
            return 1
        count = 0
        end = address
        for insn_addr, insn_size, _m, _o in self._md.disasm_lite(code, address):
            count += 1
            end = insn_addr + insn_size
        if end < address + size:
            count += 1          # undecodable tail: the CPU will fault on it
        return max(count, 1)

    # -- inspection --------------------------------------------------------------------------------
    def cr0_view(self) -> int:
        return CR0_PE | CR0_MP | CR0_ET | CR0_NE | CR0_WP | CR0_PG | (CR0_TS if self.vcpu.fpu_ts
                                                                     else 0)

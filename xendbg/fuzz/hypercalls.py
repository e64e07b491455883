"""The hypercall fuzzer: random hypercalls made by a live guest, with the invariants checked after each.

A run is a sequence of *domains*. A *template* domain is a lab guest booted for a random number of
instructions (so that fuzzing starts from different points of its boot) and, most of the time,
*primed* with what a booted kernel registers — handlers for every exception and the callbacks, at
the sentinel — through real hypercalls. Each domain is a copy of the current template, made by
``fork()`` (~15 ms on this VM, where building a domain costs over 100); it takes calls (see
:mod:`xendbg.fuzz.target`) until it crashes or shuts down (legitimately: a bad iret frame, an
unhandled trap, SCHEDOP_shutdown …), blocks with nothing to wake it, leaves guest kernel mode,
loses its scratch code page, or has served ``lifetime`` calls; then it reports back and exits. A
copy that dies outright (a segfault inside Unicorn, say) is itself a finding. Every
``TEMPLATE_USES`` domains a new template is built. Without ``fork`` each domain is built again from
the template's recipe, which gives the very same domains (and the same run) only more slowly.

After each call: no escape, the domain alive or ended with a reason, event channels consistent
(:mod:`xendbg.fuzz.invariants`). The MMU invariant checker, a full recount costing milliseconds,
runs after every call that can change frame state (the MMU hypercalls, ``set_gdt``,
``update_descriptor``, ``grant_table_op``, ``vcpu_op``, ``physdev_op``, ``iret``, multicalls,
stores and CR3 writes by the guest, any call that ended the domain) and every 32nd call otherwise;
it reports what a call made *worse* than before it (violations already present in a fresh domain
are the builder's, listed once in the summary).

Everything comes from one ``random.Random`` seeded with the seed and the guest's name (its state
travels back from each copy), and the machine is deterministic, so a seed reproduces a run: the
report's ``digest`` covers every call, its arguments, where it stopped and what it returned, and a
finding at call N is replayed by running the same seed for N + 1 calls.
"""

from __future__ import annotations

import faulthandler
import hashlib
import os
import pickle
import random
import re
import struct
import tempfile
import time
import traceback
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from xendbg.machine import hypercalls as table
from xendbg.machine.abi import xen as X
from xendbg.machine.abi.errno import errno_name
from xendbg.machine.loader import KernelImage, load_kernel

from .argsgen import GENERATORS, Ctx, choose_nr, generic, iret_frame
from .insns import MSRS, PORTS
from .invariants import Invariants, Violation
from .known import known_issue
from .target import SENTINEL_STOP, FuzzTarget

MIN_BOOT = 16                 # past Xen's entry trampoline, so the guest runs at its own CPL
TEMPLATE_USES = 25
KEEP = 5                      # examples kept of each kind of finding
PRIMED = 0.8                  # the share of templates primed with handlers and callbacks
MMU_EVERY = 32
MMU_NUMBERS = frozenset({X.HYPERVISOR_mmu_update, X.HYPERVISOR_set_gdt,
                         X.HYPERVISOR_update_descriptor, X.HYPERVISOR_memory_op,
                         X.HYPERVISOR_multicall, X.HYPERVISOR_update_va_mapping,
                         X.HYPERVISOR_physdev_op_compat, X.HYPERVISOR_grant_table_op,
                         X.HYPERVISOR_update_va_mapping_otherdomain, X.HYPERVISOR_iret,
                         X.HYPERVISOR_vcpu_op, X.HYPERVISOR_mmuext_op, X.HYPERVISOR_physdev_op})
MMU_INSNS = frozenset({"mov rax->cr3", "mov r10->cr3", "store [rax]", "invlpg [rax]", "insb"})


@dataclass
class Finding:
    """One violated invariant, with what is needed to replay it."""

    kind: str
    message: str
    detail: str
    guest: str
    seed: int
    call: int                 # index of the call in the run
    domain_first_call: int    # the call at which this domain started
    nr: int                   # -1: an instruction case, or no call at all
    name: str
    args: list[int]
    via: str                  # "trap", "page" or "instruction"
    buffers: list[tuple[int, str]]
    known: str | None = None  # the key of a known (reported) issue it matches

    def __post_init__(self) -> None:
        self.known = known_issue(self.kind, self.message, self.detail)

    def describe(self) -> str:
        args = ", ".join(f"{a:#x}" for a in self.args)
        tag = f" (known issue {self.known})" if self.known else ""
        lines = [f"[{self.kind}]{tag} {self.message}",
                 f"  call #{self.call} ({self.guest}, seed {self.seed}, domain from call "
                 f"#{self.domain_first_call}): {self.name}({args}) via {self.via}"]
        for va, data in self.buffers[:6]:
            lines.append(f"  buffer {va:#x}: {data}")
        lines.append(f"  replay: python -m xendbg.fuzz hypercalls --guest {self.guest} "
                     f"--seed {self.seed} --calls {self.call + 1}")
        if self.detail:
            lines += ["  " + line for line in self.detail.rstrip().splitlines()]
        return "\n".join(lines)


@dataclass
class DomainResult:
    """What one domain's run produced (sent back from a forked copy)."""

    calls: int = 0
    per_nr: Counter = field(default_factory=Counter)
    results: Counter = field(default_factory=Counter)
    stops: Counter = field(default_factory=Counter)
    crashes: Counter = field(default_factory=Counter)
    ended: str = ""
    findings: list[Finding] = field(default_factory=list)
    digest: bytes = b""
    check_time: float = 0.0
    mmu_checks: int = 0
    rng_state: object = None


@dataclass
class HypercallReport:
    guest: str
    seed: int
    calls: int = 0
    domains: int = 0
    templates: int = 0
    forked: bool = False
    elapsed: float = 0.0
    build_time: float = 0.0
    check_time: float = 0.0
    mmu_checks: int = 0
    per_nr: Counter = field(default_factory=Counter)
    results: Counter = field(default_factory=Counter)        # (name, "ok" | errno) at the sentinel
    stops: Counter = field(default_factory=Counter)          # how each call's run stopped
    crashes: Counter = field(default_factory=Counter)        # crash reasons, numbers elided
    replaced: Counter = field(default_factory=Counter)       # why domains ended
    findings: list[Finding] = field(default_factory=list)    # the first KEEP of each kind
    finding_counts: Counter = field(default_factory=Counter)  # (kind, message, known) → count
    mmu_baseline: list[str] = field(default_factory=list)    # violations of a fresh domain
    digest: str = ""
    mmu_checked: bool = False
    pending_watched: bool = False

    @property
    def calls_per_s(self) -> float:
        return self.calls / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def escapes(self) -> list[Finding]:
        return [f for f in self.findings if f.kind == "escape"]

    @property
    def unknown(self) -> list[Finding]:
        """Findings that are not known issues: what fails a run."""
        return [f for f in self.findings if f.known is None]

    @property
    def known(self) -> Counter:
        """How many findings matched each known issue."""
        out: Counter = Counter()
        for (_kind, _msg, known), count in self.finding_counts.items():
            if known is not None:
                out[known] += count
        return out

    @property
    def new_count(self) -> int:
        return sum(c for (_k, _m, known), c in self.finding_counts.items() if known is None)

    def add(self, finding: Finding) -> None:
        """Count every finding; keep the first few of each kind (a systematic one would repeat
        on every call of a million-call run)."""
        key = (finding.kind, _normalize(finding.message), finding.known)
        self.finding_counts[key] += 1
        if self.finding_counts[key] <= KEEP:
            self.findings.append(finding)

    def merge(self, r: DomainResult) -> None:
        self.calls += r.calls
        for mine, theirs in ((self.per_nr, r.per_nr), (self.results, r.results),
                             (self.stops, r.stops), (self.crashes, r.crashes)):
            mine.update(theirs)
        self.replaced[r.ended] += 1
        for f in r.findings:
            self.add(f)
        self.check_time += r.check_time
        self.mmu_checks += r.mmu_checks

    def summary(self) -> str:
        mmu = (f"MMU invariants ({self.mmu_checks} recounts)" if self.mmu_checked
               else "no MMU invariant checker yet")
        lines = [f"{self.guest} seed {self.seed}: {self.calls} calls on {self.domains} domains "
                 f"({self.templates} built{', the rest forked' if self.forked else ''}) in "
                 f"{self.elapsed:.1f} s ({self.calls_per_s:.0f} calls/s; building "
                 f"{self.build_time:.1f} s, checks {self.check_time:.1f} s)",
                 f"  numbers covered: {len([n for n in range(64) if self.per_nr[n]])}/64; "
                 f"instruction cases: {sum(v for k, v in self.per_nr.items() if isinstance(k, str))}"
                 f"; stops: {dict(self.stops.most_common())}",
                 f"  domains ended: {dict(self.replaced.most_common())}",
                 f"  checks: escapes, domain life, event channels"
                 f"{' (set_pending watched)' if self.pending_watched else ''}, {mmu}",
                 f"  findings: {self.new_count} new, {sum(self.known.values())} of known "
                 f"issues {dict(self.known)}; digest "
                 f"{self.digest[:16]}"]
        if self.mmu_baseline:
            lines.append(f"  MMU checker on a fresh domain (not counted): {self.mmu_baseline[:3]}")
        for reason, count in self.crashes.most_common(6):
            lines.append(f"  crash x{count}: {reason}")
        return "\n".join(lines)


_NUMBER = re.compile(r"0x[0-9a-fA-F]+|\b\d+\b")


def _normalize(text: str) -> str:
    return _NUMBER.sub("N", text)


def _full_run_length(image: KernelImage) -> int:
    """How many instructions the guest runs when left alone (bounded), to spread boot points."""
    target = FuzzTarget(image, 0)
    target.m.run(max_insns=2_000_000)
    return max(1, target.m.insns)


def fuzz_hypercalls(guest: str | KernelImage, seed: int, calls: int, *, lifetime: int = 2000,
                    budget: int = 400, page_chance: float = 0.15, insn_chance: float = 0.08,
                    stop_on_first: bool = False, fork: bool | None = None,
                    progress: Callable[[int, HypercallReport], None] | None = None
                    ) -> HypercallReport:
    """Run ``calls`` random hypercalls against domains of ``guest`` (a lab guest name or image)."""
    if isinstance(guest, KernelImage):
        image, name = guest, guest.path
    else:
        from xendbg.guests import lab_image
        image, name = load_kernel(lab_image(guest)), guest
    use_fork = hasattr(os, "fork") if fork is None else fork
    report = HypercallReport(guest=name, seed=seed, forked=use_fork)
    rng = random.Random(f"xendbg-fuzz:{seed}:{name}")
    digest = hashlib.sha256()
    boot_span = _full_run_length(image)
    template: FuzzTarget | None = None
    spec: TemplateSpec | None = None
    uses = 0
    start = time.perf_counter()
    opts = dict(budget=budget, page_chance=page_chance, insn_chance=insn_chance,
                stop_on_first=stop_on_first, guest=name, seed=seed)

    while report.calls < calls:
        if template is None or uses >= TEMPLATE_USES:
            spec = _template_spec(rng, boot_span)
            template, uses = None, 0
        if template is None or not use_fork:
            # Without fork every domain is built again from the same spec: the same domain.
            t0 = time.perf_counter()
            template = _build_template(image, spec)
            report.build_time += time.perf_counter() - t0
            report.templates += 1
            for tb in template.m.internal_errors:
                report.add(Finding(
                    kind="escape", message=tb.strip().splitlines()[-1], detail=tb, guest=name,
                    seed=seed, call=report.calls, domain_first_call=report.calls, nr=-1,
                    name="priming", args=[], via="trap", buffers=[]))
            if template.m.internal_errors or template.ready() is not None:
                template, uses = None, TEMPLATE_USES
                continue
        uses += 1
        report.domains += 1
        limit = min(lifetime, calls - report.calls)
        first = report.calls
        if use_fork:
            result = _in_child(lambda t=template, r=rng, f=first, n=limit:
                               _run_domain(t, r, f, n, **opts))
            if result.rng_state is not None:
                rng.setstate(result.rng_state)
            else:                                   # the copy died: go on deterministically
                rng = random.Random(f"xendbg-fuzz:{seed}:{name}:after:{first}")
                died = result.findings[0]
                died.guest, died.seed, died.call, died.domain_first_call = name, seed, first, first
                result.calls = 1                    # (how far it got is lost) keep moving
            template_probe = template
        else:
            result = _run_domain(template, rng, first, limit, **opts)
            template_probe = None
        report.merge(result)
        digest.update(result.digest)
        if template_probe is not None and not report.mmu_baseline:
            report.mmu_baseline = _baseline(template_probe)
        report.mmu_checked, report.pending_watched = _capabilities(template)
        if progress is not None:
            report.elapsed = time.perf_counter() - start
            progress(report.calls, report)
        if stop_on_first and report.unknown:
            break
    report.elapsed = time.perf_counter() - start
    report.digest = digest.hexdigest()
    return report


def _capabilities(target: FuzzTarget) -> tuple[bool, bool]:
    from .invariants import _mmu_checker
    return _mmu_checker() is not None, hasattr(target.m.evtchn.delivery, "set_pending")


def _baseline(target: FuzzTarget) -> list[str]:
    from .invariants import _mmu_checker
    check = _mmu_checker()
    if check is None:
        return []
    try:
        return [str(v) for v in (check(target.m) or [])]
    except Exception as exc:                       # noqa: BLE001
        return [f"the checker raised {type(exc).__name__}: {exc}"]


def _in_child(work: Callable[[], DomainResult]) -> DomainResult:
    """Run ``work`` in a forked copy of this process; its result comes back pickled. The copy's
    stderr goes to a file, so that if it dies its last words (faulthandler's stack dump) are kept."""
    rfd, wfd = os.pipe()
    with tempfile.TemporaryFile() as err:
        pid = os.fork()
        if pid == 0:                                # the copy
            os.close(rfd)
            os.dup2(err.fileno(), 2)
            faulthandler.enable()
            code = 0
            try:
                payload = pickle.dumps(("ok", work()))
            except BaseException:                  # noqa: BLE001 - a harness bug: report it
                payload = pickle.dumps(("error", traceback.format_exc()))
                code = 1
            with os.fdopen(wfd, "wb") as out:
                out.write(payload)
            os._exit(code)
        os.close(wfd)
        with os.fdopen(rfd, "rb") as inp:
            payload = inp.read()
        _, status = os.waitpid(pid, 0)
        if payload:
            kind, value = pickle.loads(payload)
            if kind == "error":
                raise RuntimeError(f"the fuzzer itself failed in a domain copy:\n{value}")
            return value
        err.seek(0)
        last_words = err.read()[-4000:].decode(errors="replace")
    why = (f"signal {os.WTERMSIG(status)}" if os.WIFSIGNALED(status)
           else f"status {os.WEXITSTATUS(status)}")
    return DomainResult(ended="the process died", findings=[Finding(
        kind="escape", message=f"the fuzzed copy of xendbg died ({why})", detail=last_words,
        guest="", seed=0, call=0, domain_first_call=0, nr=-1, name="?", args=[], via="?",
        buffers=[])])


def _run_domain(target: FuzzTarget, rng: random.Random, first: int, limit: int, *, budget: int,
                page_chance: float, insn_chance: float, stop_on_first: bool, guest: str,
                seed: int) -> DomainResult:
    """Calls on one domain until it must be replaced or ``limit`` calls are done."""
    res = DomainResult()
    inv = Invariants(target.m)
    digest = hashlib.sha256()
    res.ended = "lifetime"
    remapped = True
    while res.calls < limit:
        why = target.ready(mapping=remapped)
        if why is not None:
            res.ended = why
            break
        i = first + res.calls
        ctx = Ctx(rng, target)
        if rng.random() < insn_chance:
            reason, violations, record = _instruction(target, inv, ctx, rng, res, budget,
                                                      mmu=i % MMU_EVERY == 0)
        else:
            reason, violations, record = _hypercall(target, inv, ctx, rng, res, budget,
                                                    page_chance, mmu_tick=i % MMU_EVERY == 0)
        m = target.m
        res.stops[reason or "exception"] += 1
        if m.domain.crashed:
            res.crashes[_normalize(m.domain.crashed)] += 1
        label, nr, args, via, result = record
        remapped = nr in MMU_NUMBERS or label[5:] in MMU_INSNS
        digest.update(repr((i, label, args, via, result, reason, m.domain.crashed)).encode())
        for v in violations:
            res.findings.append(Finding(
                kind=v.kind, message=v.message, detail=v.detail, guest=guest, seed=seed, call=i,
                domain_first_call=first, nr=nr, name=label, args=list(args), via=via,
                buffers=[(va, data.hex()) for va, data in ctx.buffers]))
        res.calls += 1
        if reason is None:
            res.ended = "exception"                # state unknown after an exception
            break
        if reason == "blocked" and not m.domain.dying:
            res.ended = "blocked"                  # nothing will ever wake it
            break
        if violations and stop_on_first:
            break
    res.digest = digest.digest()
    res.rng_state = rng.getstate()
    return res


def _checked_run(target: FuzzTarget, inv: Invariants, res: DomainResult, mmu: bool, **call
                 ) -> tuple[str | None, list[Violation]]:
    inv.before()
    try:
        reason = target.call(**call)
    except Exception:                              # noqa: BLE001 - out of Machine.run itself
        return None, [Violation("escape", "exception out of Machine.run", traceback.format_exc())]
    t0 = time.perf_counter()
    mmu = mmu or target.m.domain.dying
    violations = inv.after(reason, mmu=mmu)
    res.mmu_checks += mmu and inv.mmu_check is not None
    res.check_time += time.perf_counter() - t0
    return reason, violations


def _hypercall(target: FuzzTarget, inv: Invariants, ctx: Ctx, rng: random.Random,
               res: DomainResult, budget: int, page_chance: float, mmu_tick: bool):
    nr = choose_nr(rng)
    via = "page" if (target.hypercall_page is not None and nr < 128
                     and rng.random() < page_chance) else "trap"
    rip = rsp = None
    if nr == X.HYPERVISOR_iret:
        frame, rsp = iret_frame(ctx)
        args: list[int] = []
        if via == "page":          # the stub pushes rcx, r11, rax (pv64) / eax (pv32) itself
            frame = frame[(3 if target.bits == 64 else 1) * target.word:]
        ctx._write(rsp, frame)
    else:
        args = GENERATORS.get(nr, generic)(ctx)
        args = args + [ctx.word_val() for _ in range(6 - len(args))]
    if via == "page":
        rip = target.hypercall_page + 32 * nr
        if nr != X.HYPERVISOR_iret:
            rsp = target.scratch.stack_top - target.word
            target.m.guest.write_word(rsp, target.scratch.sentinel_va)
    res.per_nr[nr] += 1
    reason, violations = _checked_run(target, inv, res, mmu_tick or nr in MMU_NUMBERS, nr=nr,
                                      args=args, rip=rip, rsp=rsp, budget=budget)
    result = None
    name = table.name_of(nr) if nr < 1 << 32 else f"hypercall_{nr:#x}"
    if reason == SENTINEL_STOP:
        m = target.m
        raw = m.cpu.uc.reg_read(m.cpu.ax_reg) & target.word_mask
        result = raw - (1 << target.bits) if raw >> (target.bits - 1) else raw
        res.results[(name, errno_name(result) if -4096 < result < 0 else "ok")] += 1
    return reason, violations, (name, nr, args, via, result)


def _instruction(target: FuzzTarget, inv: Invariants, ctx: Ctx, rng: random.Random,
                 res: DomainResult, budget: int, mmu: bool):
    """One privileged or trapping instruction (see :mod:`xendbg.fuzz.insns`) with random registers."""
    k = rng.randrange(len(target.snippet_addrs))
    name = target.snippet_names[k]
    ctx.insn = f"insn:{name}"
    rax = ctx.ptr() if rng.random() < 0.4 else ctx.word_val()
    if name == "mov rax->cr0" and rng.random() < 0.5:
        rax = target.m.cr0_view() ^ rng.choice((0, 8, 1, 1 << 16, 1 << 31))
    rcx = rng.choice(MSRS) if rng.random() < 0.8 else ctx.word_val()
    rdx = rng.choice(PORTS) if rng.random() < 0.5 else ctx.word_val()
    args = [ctx.ptr(), rcx if target.bits == 32 else ctx.ptr(), rdx, ctx.word_val(),
            ctx.word_val(), ctx.word_val()]
    if target.bits == 32:
        args[3] = ctx.ptr()                        # ESI for outsb; EDI (args[4]) for insb
        args[4] = ctx.ptr()
    ctx.insn_regs = [rax, rcx, rdx]
    res.per_nr[ctx.insn] += 1
    reason, violations = _checked_run(target, inv, res, mmu or name in MMU_INSNS, nr=rax,
                                      args=args, rip=target.snippet_addrs[k], rcx=rcx,
                                      budget=budget)
    return reason, violations, (ctx.insn, -1, ctx.insn_regs, "instruction", None)


@dataclass(frozen=True)
class TemplateSpec:
    """How to build a template domain: boot it for ``boot`` instructions, then maybe prime it."""

    boot: int
    prime: bool
    prime_seed: int


def _template_spec(rng: random.Random, boot_span: int) -> TemplateSpec:
    return TemplateSpec(boot=MIN_BOOT + rng.randrange(0, max(1, boot_span * 9 // 10)),
                        prime=rng.random() < PRIMED, prime_seed=rng.getrandbits(32))


def _build_template(image: KernelImage, spec: TemplateSpec) -> FuzzTarget:
    """The domain ``spec`` describes (booted earlier if the guest had finished by then)."""
    boot = spec.boot
    while True:
        target = FuzzTarget(image, boot)
        if target.ready() is None or boot <= MIN_BOOT:
            break
        boot = max(MIN_BOOT, boot // 2)
    if target.ready() is None and spec.prime:
        _prime(target, random.Random(spec.prime_seed))
    return target


def _prime(target: FuzzTarget, rng: random.Random) -> None:
    """What a booted kernel registers: handlers for every exception and the callbacks, all at the
    sentinel — so that traps and upcalls are delivered (and their frames written) rather than
    ending the domain. Done with real hypercalls."""
    t, abi, s = target, target.abi, target.scratch
    entries = b""
    for vector in list(range(32)) + [0x80]:
        flags = 3 if vector in (3, 4, 0x80) else rng.choice((0, 0, 4))
        entries += struct.pack("<BBH4xQ", vector, flags, abi.kernel_cs, s.sentinel_va) \
            if t.bits == 64 else struct.pack("<BBHI", vector, flags, abi.kernel_cs, s.sentinel_va)
    entries += bytes(abi.trap_info_size)
    t.m.guest.write(s.arena_va, entries)
    t.call(nr=X.HYPERVISOR_set_trap_table, args=[s.arena_va])
    if t.bits == 64:
        t.call(nr=X.HYPERVISOR_set_callbacks, args=[s.sentinel_va] * 3)
    else:
        t.call(nr=X.HYPERVISOR_set_callbacks, args=[abi.kernel_cs, s.sentinel_va] * 2)

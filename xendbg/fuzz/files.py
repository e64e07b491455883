"""The bad-input-file fuzzer: mutated kernel images through the loader, the builder and the CLI.

For each format (``FORMATS``) a few seed images are made from the lab guests
(:mod:`xendbg.fuzz.images`); each case applies one to four mutations, mostly inside the seed's
header regions (field-aware: a header field gets a boundary value, a neighbour's value, or a small
step; a ``__xen_guest`` value gets an odd token), sometimes to any byte, sometimes a truncation or a
splice. The case then goes through what ``xendbg run`` does:

1. ``load_kernel_bytes`` must return an image or raise ``ImageError`` with a clear one-line message
   — not its "internal error while reading the image" catch-all, which hides a parser exception,
   and not "out of memory";
2. a loaded image goes to ``build_domain`` (16 MiB, and the CLI's default size when that is huge),
   which must succeed or raise ``BuildError`` with one line;
3. a few cases per format go through the real command (``python -m xendbg run FILE``), which must
   end with status 0–3 and, for status 2, exactly one line on stderr — never a traceback.

Every case runs under a time limit (a hang is a failure) and, when run as a process of its own, an
address-space limit (runaway allocation is a failure, not an out-of-memory kill of the machine).
"""

from __future__ import annotations

import os
import random
import resource
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections import Counter
from dataclasses import dataclass, field

from xendbg.machine.builder import BuildConfig, BuildError, build_domain
from xendbg.machine.loader import ImageError, load_kernel_bytes

from . import images
from .images import Region, Seed
from .known import known_issue

CASE_SECONDS = 5
BUILD_MIB = 16
HUGE_DEFAULT_MIB = 1 << 16
LOW_BASE = 0x40000000            # GNU Mach's VIRT_BASE: one mutation can then make a huge span


class CaseTimeout(BaseException):
    """Raised by the alarm; a BaseException so that no ``except Exception`` in the code under test
    turns a hang into an ordinary error."""


# -- seeds -----------------------------------------------------------------------------------------

def _lab(name: str) -> bytes:
    from xendbg.guests import lab_image
    return lab_image(name).read_bytes()


def _seeds(fmt: str) -> list[Seed]:
    e64, e32 = _lab("hello-pv64"), _lab("hello-pv32")
    low = images.rebase_notes(e64, LOW_BASE)
    if fmt == "elf64":
        return [Seed("hello-pv64.elf", e64, images.elf_regions(e64)),
                Seed(f"hello-pv64.elf at VIRT_BASE {LOW_BASE:#x}", low, images.elf_regions(low))]
    if fmt == "elf32":
        return [Seed("hello-pv32.elf", e32, images.elf_regions(e32))]
    if fmt == "notes":
        return [Seed(n, d, images.elf_regions(d, notes_only=True))
                for n, d in (("hello-pv64.elf", e64), ("hello-pv32.elf", e32),
                             (f"hello-pv64.elf at VIRT_BASE {LOW_BASE:#x}", low))]
    if fmt == "xen-guest":
        out = []
        for n, d, base in (("hello-pv64", e64, None), ("hello-pv32", e32, None),
                           ("hello-pv64", e64, LOW_BASE)):
            data = images.xen_guest_elf(d, base)
            where = f" at {base:#x}" if base else ""
            out.append(Seed(f"{n} with __xen_guest{where}", data, images.xen_guest_regions(data)))
        return out
    if fmt == "bzimage":
        out = []
        for kind in ("xz", "lz4", "gzip"):
            payload = images.compress(kind, e64)
            if kind != "gzip":
                payload = images.with_size_trailer(payload, len(e64))
            data = images.bzimage(payload)
            out.append(Seed(f"bzImage/{kind}(hello-pv64)", data,
                            images.bzimage_regions(data, kind, len(payload))))
        return out
    if fmt in ("gzip", "xz", "lz4"):
        out = []
        for n, d in (("hello-pv64", e64), ("hello-pv32", e32)):
            data = images.compress(fmt, d)
            if fmt == "lz4":
                data = images.with_size_trailer(data, len(d))
            out.append(Seed(f"{fmt}({n})", data, images.stream_regions(fmt, data)))
        return out
    raise ValueError(f"unknown format {fmt!r}")


FORMATS = ("elf64", "elf32", "notes", "xen-guest", "bzimage", "gzip", "xz", "lz4")


# -- mutations ----------------------------------------------------------------------------------

TOKENS = (b"", b"0", b"0x", b"-1", b"0xffffffffffffffff", b"18446744073709551616", b"0777",
          b"yes", b"no", b"bimodal", b"yes[extended-cr3]", b"generic", b"linux", b"xen-3.0",
          b"xen-2.0", b"!dom0", b"writable_page_tables|!supervisor_mode_kernel", b"!bogus",
          b"0xffffffff80000000", b"0xc0000000", b"0x1", b"0x100000", b"A" * 200, b"=", b",",
          b"\0", b"\xff\xfe", b"HYPERCALL_PAGE=0xfffff", b"VIRT_BASE=0", b"BSD_SYMTAB",
          b"ELF_PADDR_OFFSET=0x1000", b"VIRT_ENTRY=0")


def _interesting(size: int, old: int, file_len: int, rng: random.Random) -> int:
    top = (1 << (8 * size)) - 1
    r = rng.random()
    if r < 0.25:
        step = rng.choice((1, 2, 4, 8, 16, 0x1000, 0x10000))
        return (old + step if rng.random() < 0.5 else old - step) & top
    if r < 0.8:
        choices = [0, 1, 2, 3, 4, 7, 8, 0x10, 0x40, 0x7F, 0x80, 0xFF, top, top - 1, top >> 1,
                   (top >> 1) + 1]
        if size >= 2:
            choices += [0x100, 0x1000, 0x7FFF, 0x8000, 0xFFFF]
        if size >= 4:
            choices += [file_len, file_len - 1, file_len + 1, file_len // 2, 0x100000,
                        0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, 0xC0000000, 0xF5800000]
        if size >= 8:
            choices += [1 << 32, 1 << 47, 1 << 63, 0xFFFFFFFF80000000, 0xFFFF800000000000,
                        0xFFFFFFFFFFFFF000]
        return rng.choice(choices) & top
    return rng.getrandbits(8 * size)


def _pick_region(seed: Seed, rng: random.Random) -> Region:
    total = sum(r.weight for r in seed.regions)
    x = rng.random() * total
    for r in seed.regions:
        x -= r.weight
        if x <= 0:
            return r
    return seed.regions[-1]


def mutate(seed: Seed, rng: random.Random) -> tuple[bytes, list[str]]:
    """One case: 1–4 mutations of ``seed``; returns the bytes and what was done (for the report)."""
    data = bytearray(seed.data)
    done: list[str] = []
    for _ in range(1 + min(3, int(rng.expovariate(1.2)))):
        region = _pick_region(seed, rng)
        lo, hi = max(0, min(region.start, len(data))), max(0, min(region.end, len(data)))
        r = rng.random()
        if region.fields and r < 0.55:
            off, size = rng.choice(region.fields)
            if off + size > len(data):
                continue
            old = int.from_bytes(data[off:off + size], "little")
            new = _interesting(size, old, len(data), rng)
            data[off:off + size] = new.to_bytes(size, "little")
            done.append(f"{region.name}: field @{off:#x}/{size} {old:#x}->{new:#x}")
        elif region.text and r < 0.75 and hi > lo:
            a = rng.randrange(lo, hi)
            b = min(hi, a + rng.randrange(0, 24))
            token = rng.choice(TOKENS)
            data[a:b] = token
            done.append(f"{region.name}: [{a:#x}:{b:#x}] := {token[:24]!r}")
        elif r < 0.85 and hi > lo:
            off = rng.randrange(lo, hi)
            if rng.random() < 0.5:
                bit = rng.randrange(8)
                data[off] ^= 1 << bit
                done.append(f"{region.name}: bit {bit} @{off:#x}")
            else:
                val = rng.choice((0, 0xFF, 0x7F, 0x80, rng.getrandbits(8)))
                data[off] = val
                done.append(f"{region.name}: byte @{off:#x} := {val:#x}")
        elif r < 0.92:
            cut = rng.randrange(lo, hi + 1) if hi > lo else rng.randrange(len(data) + 1)
            del data[cut:]
            done.append(f"truncate at {cut:#x}")
        else:
            if hi <= lo or not data:
                continue
            a = rng.randrange(lo, hi)
            n = rng.randrange(1, 64)
            src = rng.randrange(len(data))
            chunk = data[src:src + n]
            if rng.random() < 0.5:
                data[a:a] = chunk
                done.append(f"insert {len(chunk)} bytes from @{src:#x} at @{a:#x}")
            else:
                data[a:a + len(chunk)] = chunk
                done.append(f"copy {len(chunk)} bytes from @{src:#x} over @{a:#x}")
    return bytes(data), done


# -- running a case -----------------------------------------------------------------------------

@dataclass
class FileFailure:
    fmt: str
    seed_name: str
    case: int
    kind: str
    message: str
    mutations: list[str]
    detail: str = ""
    rng_seed: int = 0
    known: str | None = None

    def __post_init__(self) -> None:
        self.known = known_issue(self.kind, self.message, self.detail)

    def describe(self) -> str:
        tag = f" (known issue {self.known})" if self.known else ""
        lines = [f"[{self.kind}]{tag} {self.message}",
                 f"  {self.fmt} case #{self.case} (seed {self.rng_seed}) of {self.seed_name}: "
                 + "; ".join(self.mutations)]
        lines += ["  " + line for line in self.detail.rstrip().splitlines()[-12:]]
        return "\n".join(lines)


@dataclass
class FilesReport:
    fmt: str
    seed: int
    cases: int = 0
    elapsed: float = 0.0
    outcomes: Counter = field(default_factory=Counter)
    messages: Counter = field(default_factory=Counter)
    failures: list[FileFailure] = field(default_factory=list)
    cli_cases: int = 0
    slowest: float = 0.0

    @property
    def cases_per_s(self) -> float:
        return self.cases / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def unknown(self) -> list[FileFailure]:
        return [f for f in self.failures if f.known is None]

    @property
    def known(self) -> Counter:
        return Counter(f.known for f in self.failures if f.known is not None)

    @property
    def new_count(self) -> int:
        return len(self.unknown)

    def summary(self) -> str:
        return (f"{self.fmt} seed {self.seed}: {self.cases} cases in {self.elapsed:.1f} s "
                f"({self.cases_per_s:.0f}/s, slowest {self.slowest * 1000:.0f} ms); "
                f"{dict(self.outcomes.most_common())}; {self.cli_cases} through the CLI; "
                f"failures: {len(self.unknown)} new, {sum(self.known.values())} of known issues "
                f"{dict(self.known)}")

    def as_dict(self) -> dict:
        return {"format": self.fmt, "seed": self.seed, "cases": self.cases,
                "elapsed": self.elapsed, "cases_per_s": self.cases_per_s,
                "outcomes": dict(self.outcomes), "cli_cases": self.cli_cases,
                "slowest": self.slowest, "failures": [f.describe() for f in self.unknown],
                "known": dict(self.known),
                "top_messages": self.messages.most_common(12)}


def _one_line(message: str) -> str | None:
    """Why ``message`` is not a clear one-line error (None: it is)."""
    if not message.strip():
        return "empty message"
    if "\n" in message:
        return "message spans several lines"
    return None


_armed = [False]


def _on_alarm(_signum, _frame) -> None:
    if _armed[0]:               # disarmed first, so a late signal cannot hit the bookkeeping
        _armed[0] = False
        raise CaseTimeout()


def check_case(data: bytes) -> tuple[str, str | None, str, str]:
    """Load and build one image: ``(outcome, failure kind or None, message, traceback)``."""
    from xendbg.runner import default_memory

    try:
        image = load_kernel_bytes(data)
    except ImageError as e:
        msg = str(e)
        bad = _one_line(msg)
        if msg.startswith("internal error"):
            cause = "".join(traceback.format_exception(e.__cause__)) if e.__cause__ else ""
            return "image error", "loader exception", msg, cause
        if msg.startswith("out of memory"):
            return "image error", "loader out of memory", msg, ""
        return "image error", bad, msg, ""
    except CaseTimeout:
        raise
    except Exception as e:                         # noqa: BLE001 - the point of the exercise
        return "exception", "exception from load_kernel_bytes", f"{type(e).__name__}: {e}", \
            traceback.format_exc()
    sizes = [BUILD_MIB]
    try:
        default = default_memory(image)
    except Exception as e:                         # noqa: BLE001
        return "exception", "exception from the CLI's default_memory", \
            f"{type(e).__name__}: {e}", traceback.format_exc()
    if default >= HUGE_DEFAULT_MIB:
        sizes.append(default)
    outcome = "built"
    for mib in sizes:
        try:
            build_domain(image, BuildConfig(memory_mib=mib))
        except BuildError as e:
            bad = _one_line(str(e))
            if bad:
                return "build error", bad, str(e), ""
            outcome = "build error"
        except CaseTimeout:
            raise
        except Exception as e:                     # noqa: BLE001
            return "exception", f"exception from build_domain ({mib} MiB)", \
                f"{type(e).__name__}: {e}", traceback.format_exc()
    return outcome, None, "", ""


def _cli_case(data: bytes, memory_limit_mib: int) -> tuple[str | None, str]:
    """Run ``xendbg run`` on ``data``: (failure kind or None, what it printed)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "kernel.img")
        with open(path, "wb") as fh:
            fh.write(data)

        def limit() -> None:
            if memory_limit_mib:
                lim = memory_limit_mib << 20
                resource.setrlimit(resource.RLIMIT_AS, (lim, lim))

        try:
            proc = subprocess.run([sys.executable, "-m", "xendbg", "run", path, "--timeout", "3"],
                                  capture_output=True, timeout=60, preexec_fn=limit)
        except subprocess.TimeoutExpired:
            return "cli hang", "no exit within 60 s"
    err = proc.stderr.decode(errors="replace")
    if "Traceback" in err:
        return "cli traceback", err
    if proc.returncode not in (0, 1, 2, 3):
        return f"cli exit {proc.returncode}", err
    if proc.returncode == 2:
        lines = err.strip().splitlines()
        if len(lines) != 1 or not lines[0].startswith("xendbg: "):
            return "cli message", err
    return None, err


def fuzz_files(fmt: str, seed: int, cases: int, *, cli_cases: int = 0,
               memory_limit_mib: int = 0) -> FilesReport:
    """Run ``cases`` mutations of format ``fmt``; ``memory_limit_mib`` caps this process's address
    space meanwhile (use it only in a process of its own)."""
    seeds = _seeds(fmt)
    rng = random.Random(f"xendbg-fuzz-files:{seed}:{fmt}")
    report = FilesReport(fmt=fmt, seed=seed)
    old_limit = resource.getrlimit(resource.RLIMIT_AS)
    if memory_limit_mib:
        lim = memory_limit_mib << 20
        resource.setrlimit(resource.RLIMIT_AS, (lim, old_limit[1]))
    old_handler = signal.signal(signal.SIGALRM, _on_alarm)
    cli_every = max(1, cases // cli_cases) if cli_cases else 0
    start = time.perf_counter()
    try:
        for i in range(cases):
            s = seeds[i % len(seeds)]
            data, done = mutate(s, rng)
            t0 = time.perf_counter()
            _armed[0] = True
            signal.setitimer(signal.ITIMER_REAL, CASE_SECONDS)
            try:
                outcome, bad, msg, tb = check_case(data)
                _armed[0] = False
            except CaseTimeout:
                outcome, bad, msg, tb = "hang", "hang", f"no answer within {CASE_SECONDS} s", \
                    traceback.format_exc()
            finally:
                _armed[0] = False
                signal.setitimer(signal.ITIMER_REAL, 0)
            report.slowest = max(report.slowest, time.perf_counter() - t0)
            report.cases += 1
            report.outcomes[outcome] += 1
            if msg and not bad:
                report.messages[msg.split(":")[0][:60]] += 1
            if bad:
                report.failures.append(FileFailure(fmt, s.name, i, bad, msg, done, tb, seed))
            if cli_every and i % cli_every == 0 and report.cli_cases < cli_cases:
                report.cli_cases += 1
                kind, err = _cli_case(data, memory_limit_mib)
                if kind:
                    report.failures.append(FileFailure(fmt, s.name, i, kind, err.strip()[-300:],
                                                       done, err, seed))
    finally:
        signal.signal(signal.SIGALRM, old_handler)
        if memory_limit_mib:
            resource.setrlimit(resource.RLIMIT_AS, old_limit)
        report.elapsed = time.perf_counter() - start
    return report


def case_bytes(fmt: str, seed: int, case: int) -> bytes:
    """The exact bytes of case ``case`` of a run (to replay or save a failure)."""
    seeds = _seeds(fmt)
    rng = random.Random(f"xendbg-fuzz-files:{seed}:{fmt}")
    data = b""
    for i in range(case + 1):
        data, _ = mutate(seeds[i % len(seeds)], rng)
    return data

"""The bad-input-file fuzzer (``xendbg.fuzz.files``): its CI form, and proof that its checks bite."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from xendbg.fuzz import files
from xendbg.fuzz.files import FORMATS, case_bytes, check_case
from xendbg.machine.builder import BuildError
from xendbg.machine.loader import ImageError


def test_short_form_of_every_format_in_a_process_of_its_own(tmp_path):
    """150 mutations per format, one of them through `xendbg run`, under a memory limit."""
    out = tmp_path / "files.json"
    proc = subprocess.run([sys.executable, "-m", "xendbg.fuzz", "files", "--cases", "150",
                           "--cli", "1", "--seed", "7", "--json", str(out)],
                          capture_output=True, text=True, timeout=900)
    print(proc.stdout[-4000:])
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    reports = json.loads(out.read_text())
    assert [r["format"] for r in reports] == list(FORMATS)
    for r in reports:
        assert r["cases"] == 150 and r["cli_cases"] == 1 and not r["failures"]
        assert r["outcomes"].get("image error") and r["outcomes"].get("built"), r


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_seed_image_loads_and_builds(fmt):
    for seed in files._seeds(fmt):
        assert check_case(seed.data) == ("built", None, "", ""), seed.name


def test_a_case_is_the_same_bytes_every_time():
    a = case_bytes("bzimage", 5, 17)
    assert a == case_bytes("bzimage", 5, 17)
    assert a != case_bytes("bzimage", 6, 17)
    assert a not in [s.data for s in files._seeds("bzimage")]


def test_hidden_tracebacks_count_as_failures(monkeypatch):
    def internal(data):
        raise ImageError("internal error while reading the image: KeyError: 3")

    monkeypatch.setattr(files, "load_kernel_bytes", internal)
    assert check_case(b"x")[1] == "loader exception"

    def plain(data):
        raise ValueError("no")

    monkeypatch.setattr(files, "load_kernel_bytes", plain)
    assert check_case(b"x")[1] == "exception from load_kernel_bytes"

    def multi(data):
        raise ImageError("two\nlines")

    monkeypatch.setattr(files, "load_kernel_bytes", multi)
    assert check_case(b"x")[1] == "message spans several lines"


def test_builder_exceptions_other_than_builderror_are_failures(monkeypatch):
    seed = files._seeds("elf32")[0].data

    def oserror(image, config):
        raise OSError(12, "Cannot allocate memory")

    monkeypatch.setattr(files, "build_domain", oserror)
    outcome, bad, msg, _tb = check_case(seed)
    assert outcome == "exception" and bad.startswith("exception from build_domain") and \
        "OSError" in msg

    def refused(image, config):
        raise BuildError("the kernel does not fit")

    monkeypatch.setattr(files, "build_domain", refused)
    assert check_case(seed)[:2] == ("build error", None)


def test_the_cli_answers_a_truncated_image_with_one_line():
    data = files._seeds("elf64")[0].data[:100]
    kind, err = files._cli_case(data, memory_limit_mib=1536)
    assert kind is None, err
    assert err.strip().startswith("xendbg: ") and "truncated ELF" in err


def test_known_issues_match_only_their_symptom(monkeypatch):
    from xendbg.fuzz import known
    from xendbg.fuzz.known import KnownIssue, known_issue

    # The two entries this test used were fixed (tests/test_regressions_fuzz.py); stand-ins keep
    # the matching itself tested whatever the list holds.
    monkeypatch.setattr(known, "KNOWN", (
        KnownIssue("builder-allocation", "builder.py", "stand-in",
                   kind=r"^(exception from build_domain.*|cli traceback)$",
                   text=r"(OSError|OverflowError|MemoryError).*(mmap|MachineMemory|memory\.py)"),
        KnownIssue("count-tables-span", "pagetable.py", "stand-in",
                   kind=r"^(hang|exception from build_domain.*|cli traceback)$",
                   text=r"count_tables")))
    mmap_tb = 'File "xendbg/machine/memory.py", line 42, in __init__\n    self._mmap = mmap.mmap(...)\n'
    assert known_issue("exception from build_domain (16 MiB)", "OSError: [Errno 12] Cannot "
                       "allocate memory", mmap_tb) == "builder-allocation"
    assert known_issue("exception from build_domain (16 MiB)", "KeyError: 3", "elsewhere") is None
    assert known_issue("hang", "no answer within 5 s", "in count_tables\n") == "count-tables-span"
    assert known_issue("escape", "ValueError: boom", "do_xen_version") is None

"""``xendbg run`` end to end: lab guests, exit statuses, bad input files, --trace, --stats."""

from __future__ import annotations

import gzip
import json
import lzma
import struct
import subprocess
import sys

import pytest

XENDBG = [sys.executable, "-m", "xendbg"]


def run(*args, timeout=120):
    return subprocess.run([*XENDBG, *args], capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("guest,magic", [("hello-pv64", "xen-3.0-x86_64"),
                                         ("hello-pv32", "xen-3.0-x86_32p")])
def test_hello_guests_pass(guest, magic):
    r = run("run", guest, "--cmdline", "lab=0")
    assert r.returncode == 0, r.stderr
    assert magic in r.stdout
    lines = r.stdout.strip().splitlines()
    assert lines[-1] == "RESULT: PASS"
    assert not [line for line in lines if line.startswith("CHECK") and not line.endswith(": ok")]
    assert 'cmd_line="lab=0"' in r.stdout
    assert "hello from the console ring" in r.stdout


def _one_line_error(r):
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    err = r.stderr.strip().splitlines()
    assert len(err) == 1, r.stderr
    assert "Traceback" not in r.stderr
    return err[0]


def test_text_file_is_refused(tmp_path):
    f = tmp_path / "notes.txt"
    f.write_text("just some text\n")
    assert "xendbg:" in _one_line_error(run("run", str(f)))


def test_truncated_elf_is_refused(tmp_path):
    from xendbg.guests import lab_image
    data = lab_image("hello-pv64").read_bytes()
    for cut in (20, 64, 100, 300, len(data) // 2):
        f = tmp_path / f"cut{cut}.elf"
        f.write_bytes(data[:cut])
        _one_line_error(run("run", str(f)))


def test_non_xen_elf_is_refused():
    line = _one_line_error(run("run", "/bin/true"))
    assert "Xen" in line


def _bzimage(payload: bytes) -> bytes:
    setup_sects = 4
    header = bytearray((setup_sects + 1) * 512)
    header[0x1F1] = setup_sects
    header[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", header, 0x206, 0x20F)
    struct.pack_into("<II", header, 0x248, 0, len(payload))
    return bytes(header) + payload


def test_corrupt_bzimage_payload_is_refused(tmp_path):
    from xendbg.guests import lab_image
    good = lzma.compress(lab_image("hello-pv64").read_bytes(), format=lzma.FORMAT_XZ)
    bad = bytearray(good)
    bad[len(bad) // 2] ^= 0xFF
    f = tmp_path / "vmlinuz"
    f.write_bytes(_bzimage(bytes(bad)))
    line = _one_line_error(run("run", str(f)))
    assert "corrupt" in line or "xz" in line


def test_wrapped_images_boot(tmp_path):
    """The same guest as a gzip'd ELF and inside a bzImage boots to PASS."""
    from xendbg.guests import lab_image
    elf = lab_image("hello-pv64").read_bytes()
    gz = tmp_path / "hello.gz"
    gz.write_bytes(gzip.compress(elf, mtime=0))
    bz = tmp_path / "vmlinuz"
    bz.write_bytes(_bzimage(lzma.compress(elf, format=lzma.FORMAT_XZ)))
    for f in (gz, bz):
        r = run("run", str(f))
        assert r.returncode == 0 and r.stdout.strip().endswith("RESULT: PASS"), r.stderr


def test_unknown_guest_and_missing_file():
    assert "guests list" in _one_line_error(run("run", "no-such-guest"))
    _one_line_error(run("run", "/no/such/file.elf"))


def test_until_and_trace(tmp_path):
    trace = tmp_path / "t.jsonl"
    r = run("run", "hello-pv64", "--until", r"CHECK m2p: ok", "--trace", str(trace))
    assert r.returncode == 0
    assert "CHECK m2p: ok" in r.stdout and "RESULT" not in r.stdout
    records = [json.loads(line) for line in trace.read_text().splitlines()]
    names = {rec["name"] for rec in records}
    assert {"console_io", "xen_version", "hypercall_63"} <= names
    enosys = next(rec for rec in records if rec["name"] == "hypercall_63")
    assert enosys["result"] == -38 and enosys["error"] == "-ENOSYS"
    insns = [rec["insns"] for rec in records]
    assert insns == sorted(insns)


def test_trace_is_deterministic(tmp_path):
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    for t in (a, b):
        assert run("run", "hello-pv32", "--trace", str(t)).returncode == 0
    assert a.read_bytes() == b.read_bytes()


def test_until_never_matching_guest_powers_off():
    r = run("run", "hello-pv64", "--until", "never printed")
    assert r.returncode == 1 and "powered off before --until matched" in r.stderr


def test_stats_report_notes_and_counts():
    r = run("run", "hello-pv32", "--stats")
    assert r.returncode == 0
    assert "PAE_MODE" in r.stderr and "HYPERCALL_PAGE" in r.stderr
    assert "instructions" in r.stderr and "console_io" in r.stderr
    assert "not implemented: -ENOSYS" in r.stderr


def test_bad_regex_is_usage_error():
    _one_line_error(run("run", "hello-pv64", "--until", "("))


def test_guests_list_names_everything():
    r = run("guests", "list")
    assert r.returncode == 0
    for name in ("hello-pv64", "hello-pv32", "grub-x86_64", "grub-i386", "gnumach", "gnumach-dbg",
                 "linux-cloud", "linux", "busybox"):
        assert name in r.stdout


def test_input_escapes():
    from xendbg.runner import parse_escapes
    assert parse_escapes(r"echo $((6*7))\n") == b"echo $((6*7))\n"
    assert parse_escapes(r"a\tb\r\x41\\") == b"a\tb\rA\\"
    assert parse_escapes(r"\xZZ") == b"\\xZZ"


def test_vcpus_option():
    assert run("run", "hello-pv64", "--vcpus", "1").returncode == 0
    line = _one_line_error(run("run", "hello-pv64", "--vcpus", "2"))
    assert "one vCPU" in line
    _one_line_error(run("run", "hello-pv64", "--vcpus", "0"))

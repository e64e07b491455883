"""The BusyBox initramfs: a cpio newc archive the Linux unpacker accepts, built deterministically."""

from __future__ import annotations

import stat

from xendbg.guests.initramfs import INIT_SCRIPT, build


def parse_newc(data: bytes) -> list[dict]:
    entries, pos = [], 0
    while True:
        assert data[pos:pos + 6] == b"070701", f"bad magic at {pos}"
        fields = [int(data[pos + 6 + 8 * i:pos + 14 + 8 * i], 16) for i in range(13)]
        namesize, filesize = fields[11], fields[6]
        name_start = pos + 110
        name = data[name_start:name_start + namesize - 1].decode()
        assert data[name_start + namesize - 1] == 0
        body = name_start + namesize + (-(110 + namesize) % 4)
        content = data[body:body + filesize]
        pos = body + filesize + (-filesize % 4)
        if name == "TRAILER!!!":
            assert pos == len(data)
            return entries
        entries.append({"name": name, "mode": fields[1], "data": content, "mtime": fields[5],
                        "rdev": (fields[9], fields[10])})


def test_archive_layout():
    busybox = b"\x7fELF" + bytes(range(256)) * 3
    entries = {e["name"]: e for e in parse_newc(build(busybox))}
    assert entries["bin/busybox"]["data"] == busybox
    assert stat.S_ISREG(entries["init"]["mode"]) and entries["init"]["mode"] & 0o111
    assert entries["init"]["data"] == INIT_SCRIPT
    assert entries["init"]["data"].startswith(b"#!/bin/busybox sh\n")
    assert stat.S_ISCHR(entries["dev/console"]["mode"]) and entries["dev/console"]["rdev"] == (5, 1)
    assert stat.S_ISLNK(entries["bin/sh"]["mode"]) and entries["bin/sh"]["data"] == b"busybox"
    for name in ("proc", "sys", "dev", "bin"):
        assert stat.S_ISDIR(entries[name]["mode"])
    assert all(e["mtime"] == 0 for e in entries.values())


def test_build_is_deterministic():
    assert build(b"abc") == build(b"abc")

"""xenstored in process: every request through a real ring page, message by message.

The guest side here is a tiny xenbus client written against io/xs_wire.h (like Linux's xb_write/xb_read):
it puts bytes into req[] and advances req_prod, and pulls bytes out of rsp[] and advances rsp_cons. The
page is a plain bytearray.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from xendbg.machine.abi.layout import (
    XENSTORE_CONNECTION,
    XENSTORE_ERROR,
    XENSTORE_REQ,
    XENSTORE_REQ_CONS,
    XENSTORE_REQ_PROD,
    XENSTORE_RSP,
    XENSTORE_RSP_CONS,
    XENSTORE_RSP_PROD,
    XENSTORE_SERVER_FEATURES,
)
from xendbg.machine.xenstore import (
    XS_CONTROL,
    XS_DIRECTORY,
    XS_DIRECTORY_PART,
    XS_ERROR,
    XS_GET_DOMAIN_PATH,
    XS_GET_PERMS,
    XS_INTRODUCE,
    XS_IS_DOMAIN_INTRODUCED,
    XS_MKDIR,
    XS_READ,
    XS_RELEASE,
    XS_RESET_WATCHES,
    XS_RESUME,
    XS_RM,
    XS_SET_PERMS,
    XS_SET_TARGET,
    XS_TRANSACTION_END,
    XS_TRANSACTION_START,
    XS_UNWATCH,
    XS_WATCH,
    XS_WATCH_EVENT,
    XS_WRITE,
    XenStore,
    XenStoreError,
    XsChange,
    XsMessage,
)
from xendbg.machine.xenstore_ring import (
    XENSTORE_ERROR_PROTO,
    XENSTORE_ERROR_RINGIDX,
    XENSTORE_RECONNECT,
    XENSTORE_SERVER_FEATURE_ERROR,
    XENSTORE_SERVER_FEATURE_RECONNECTION,
    BytearrayPage,
    XenStoreRing,
    _atoi,
)

HDR = struct.Struct("<IIII")
U32 = struct.Struct("<I")
DOMU = 1
HOME = "/local/domain/1"


class Msg(NamedTuple):
    type: int
    req_id: int
    tx_id: int
    payload: bytes

    @property
    def error(self) -> str | None:
        return self.payload.rstrip(b"\0").decode() if self.type == XS_ERROR else None

    @property
    def strings(self) -> list[bytes]:
        return self.payload.split(b"\0")[:-1]


def args(*parts: str | bytes) -> bytes:
    """NUL-terminated strings, the usual payload shape."""
    return b"".join((p.encode() if isinstance(p, str) else p) + b"\0" for p in parts)


def make_store() -> XenStore:
    store = XenStore()
    store.populate_domain(1, "guest", 262144, 2, console_port=2, console_mfn=0x1234, store_port=1,
                          store_mfn=0x1235, kernel="/boot/vmlinuz", cmdline="console=hvc0")
    store.populate_domain(2, "other", 131072, 1, console_port=2, console_mfn=0x2234, store_port=1,
                          store_mfn=0x2235)
    return store


class Guest:
    """A minimal xenbus client on a bytearray page."""

    def __init__(self, store: XenStore | None = None, domid: int = DOMU, start: int = 0) -> None:
        self.store = store if store is not None else make_store()
        self.buf = bytearray(4096)
        for off in (XENSTORE_REQ_CONS, XENSTORE_REQ_PROD, XENSTORE_RSP_CONS, XENSTORE_RSP_PROD):
            U32.pack_into(self.buf, off, start & 0xFFFFFFFF)     # guests may not assume indices start at 0
        self.ring = XenStoreRing(self.store, domid, BytearrayPage(self.buf))
        self.rx = bytearray()
        self.events: list[Msg] = []
        self.next_id = 100

    def r32(self, off: int) -> int:
        return U32.unpack_from(self.buf, off)[0]

    def w32(self, off: int, value: int) -> None:
        U32.pack_into(self.buf, off, value & 0xFFFFFFFF)

    def room(self) -> int:
        return 1024 - ((self.r32(XENSTORE_REQ_PROD) - self.r32(XENSTORE_REQ_CONS)) & 0xFFFFFFFF)

    def put(self, data: bytes) -> None:
        """Append to req[] (the caller made sure there is room)."""
        prod = self.r32(XENSTORE_REQ_PROD)
        assert len(data) <= self.room()
        for i, b in enumerate(data):
            self.buf[XENSTORE_REQ + ((prod + i) & 1023)] = b
        self.w32(XENSTORE_REQ_PROD, prod + len(data))

    def put_all(self, data: bytes) -> None:
        """Stream a message of any size, letting xenstored consume as we go (as xb_write waits)."""
        while data:
            n = min(self.room(), len(data))
            assert n, "xenstored stopped consuming"
            self.put(data[:n])
            data = data[n:]
            self.ring.process()

    def pull(self) -> bool:
        """Move everything in rsp[] into our receive buffer; True if anything came."""
        cons, prod = self.r32(XENSTORE_RSP_CONS), self.r32(XENSTORE_RSP_PROD)
        n = (prod - cons) & 0xFFFFFFFF
        assert n <= 1024
        for i in range(n):
            self.rx.append(self.buf[XENSTORE_RSP + ((cons + i) & 1023)])
        self.w32(XENSTORE_RSP_CONS, cons + n)
        return n > 0

    def messages(self) -> list[Msg]:
        out = []
        while len(self.rx) >= 16:
            t, rid, tid, ln = HDR.unpack_from(self.rx)
            assert ln <= 4096
            if len(self.rx) < 16 + ln:
                break
            out.append(Msg(t, rid, tid, bytes(self.rx[16:16 + ln])))
            del self.rx[:16 + ln]
        return out

    def drain(self) -> list[Msg]:
        """Let xenstored run until it has nothing more to say; return every complete message."""
        self.ring.process()
        while self.pull():
            self.ring.process()
        return self.messages()

    def send(self, msg_type: int, payload: bytes, tx_id: int = 0, req_id: int | None = None) -> int:
        if req_id is None:
            self.next_id += 1
            req_id = self.next_id
        self.put_all(HDR.pack(msg_type, req_id, tx_id, len(payload)) + payload)
        return req_id

    def call(self, msg_type: int, payload: bytes, tx_id: int = 0) -> Msg:
        rid = self.send(msg_type, payload, tx_id)
        msgs = self.drain()
        replies = [m for m in msgs if m.type != XS_WATCH_EVENT]
        self.events += [m for m in msgs if m.type == XS_WATCH_EVENT]
        assert len(replies) == 1, msgs
        assert replies[0].req_id == rid and replies[0].tx_id == tx_id
        return replies[0]

    def ok(self, msg_type: int, payload: bytes, tx_id: int = 0) -> bytes:
        reply = self.call(msg_type, payload, tx_id)
        assert reply.type == msg_type, reply
        return reply.payload

    def err(self, msg_type: int, payload: bytes, tx_id: int = 0) -> str | None:
        return self.call(msg_type, payload, tx_id).error

    def take_events(self) -> list[tuple[str, str]]:
        self.events += [m for m in self.drain() if m.type == XS_WATCH_EVENT]
        out = [(m.strings[0].decode(), m.strings[1].decode()) for m in self.events]
        self.events.clear()
        return out


@pytest.fixture
def g() -> Guest:
    return Guest()


# --- the toolstack's tree -----------------------------------------------------------------------------------

def test_populate_domain_matches_libxl(g: Guest) -> None:
    s = g.store
    assert s.read(f"{HOME}/name") == b"guest"
    assert s.read(f"{HOME}/domid") == b"1"
    assert s.read(f"{HOME}/memory/target") == b"262144"
    assert s.read(f"{HOME}/memory/static-max") == b"262144"
    assert s.read(f"{HOME}/cpu/1/availability") == b"online"
    assert s.read(f"{HOME}/store/ring-ref") == str(0x1235).encode()
    assert s.read(f"{HOME}/console/port") == b"2"
    assert s.read(f"{HOME}/console/ring-ref") == str(0x1234).encode()
    assert s.read(f"{HOME}/console/type") == b"xenconsoled"
    assert s.read(f"{HOME}/control/shutdown") == b""
    assert s.read(f"{HOME}/control/platform-feature-xs_reset_watches") == b"1"
    vm = s.read(f"{HOME}/vm").decode()
    assert s.read(f"{vm}/image/ostype") == b"linux"
    assert s.read(f"{vm}/image/cmdline") == b"console=hvc0"
    # Ownership as libxl sets it: the home and control/ are dom0's, readable by the guest ...
    assert s.get_perms(HOME) == ["n0", "r1"]
    assert s.get_perms(f"{HOME}/control") == ["n0", "r1"]
    assert s.get_perms(f"{HOME}/device/suspend") == ["n0", "r1"]
    # ... while the guest owns its writable nodes.
    for leaf in ("control/shutdown", "control/feature-poweroff", "data", "drivers", "error",
                 "device/suspend/event-channel"):
        assert s.get_perms(f"{HOME}/{leaf}") == ["n1"], leaf
    assert s.get_perms(f"{HOME}/console") == ["n1", "r0"]
    assert s.get_perms(f"{HOME}/console/ring-ref") == ["n0", "r1"]
    assert s.is_introduced(1) and s.is_introduced(2)
    assert s.check() == []


def test_server_features_advertised(g: Guest) -> None:
    assert g.r32(XENSTORE_SERVER_FEATURES) == \
        XENSTORE_SERVER_FEATURE_RECONNECTION | XENSTORE_SERVER_FEATURE_ERROR


# --- reads, writes, directories ---------------------------------------------------------------------------

def test_read(g: Guest) -> None:
    assert g.ok(XS_READ, args("name")) == b"guest"                 # relative to the home
    assert g.ok(XS_READ, args(f"{HOME}/domid")) == b"1"            # absolute
    assert g.err(XS_READ, args("nonexistent")) == "ENOENT"
    # Another domain's tree and dom0's are closed, whether the node exists or not.
    assert g.err(XS_READ, args("/local/domain/2/name")) == "EACCES"
    assert g.err(XS_READ, args("/local/domain/2/nonexistent")) == "EACCES"
    assert g.err(XS_READ, args("/local/domain/0/name")) == "EACCES"
    assert g.err(XS_READ, args("/local/domain/9/name")) == "EACCES"
    # But a node that grants us read access is readable even below a closed parent.
    assert g.ok(XS_READ, args("/local/domain/0/backend/console/1/0/state")) == b"1"


def test_write_creates_parents_owned_by_the_guest(g: Guest) -> None:
    assert g.ok(XS_WRITE, args("data/a/b") + b"hello") == b"OK\0"
    assert g.store.read(f"{HOME}/data/a/b") == b"hello"
    assert g.store.get_perms(f"{HOME}/data/a") == ["n1"]
    assert g.ok(XS_WRITE, args("data/a/b") + b"\0bin\xff") == b"OK\0"   # values are binary
    assert g.ok(XS_READ, args("data/a/b")) == b"\0bin\xff"
    assert g.ok(XS_WRITE, args("data/empty")) == b"OK\0"
    assert g.ok(XS_READ, args("data/empty")) == b""
    # In a directory dom0 owns and only lets us read, the guest may not create, but its own
    # writable nodes there are fine.
    assert g.err(XS_WRITE, args("control/new") + b"x") == "EACCES"
    assert g.err(XS_WRITE, args("name") + b"evil") == "EACCES"
    assert g.ok(XS_WRITE, args("control/feature-poweroff") + b"1") == b"OK\0"
    assert g.err(XS_WRITE, args("/local/domain/2/data/x") + b"x") == "EACCES"
    assert g.err(XS_WRITE, b"no-nul-at-all") == "EINVAL"
    assert g.store.read(f"{HOME}/name") == b"guest"
    assert g.store.check() == []


def test_mkdir(g: Guest) -> None:
    assert g.ok(XS_MKDIR, args("data/d1/d2")) == b"OK\0"
    assert g.store.ls(f"{HOME}/data/d1") == ["d2"]
    g.store.write(f"{HOME}/data/d1/d2", "keep")
    assert g.ok(XS_MKDIR, args("data/d1/d2")) == b"OK\0"            # existing: untouched
    assert g.store.read(f"{HOME}/data/d1/d2") == b"keep"
    assert g.err(XS_MKDIR, args("cpu/9")) == "EACCES"
    assert g.err(XS_MKDIR, args("a", "b")) == "EINVAL"


def test_rm(g: Guest) -> None:
    g.ok(XS_WRITE, args("data/x/y/z") + b"1")
    g.ok(XS_WRITE, args("data/x/w") + b"2")
    assert g.ok(XS_RM, args("data/x")) == b"OK\0"
    assert not g.store.exists(f"{HOME}/data/x")
    assert not g.store.exists(f"{HOME}/data/x/y/z")
    assert g.store.ls(f"{HOME}/data") == []
    assert g.ok(XS_RM, args("data/gone")) == b"OK\0"                # missing, parent exists: fine
    assert g.err(XS_RM, args("data/gone/deeper")) == "ENOENT"       # parent missing too
    assert g.err(XS_RM, args("name")) == "EACCES"
    assert g.err(XS_RM, args("/")) == "EACCES"
    with pytest.raises(XenStoreError) as e:
        g.store.rm("/")
    assert e.value.name == "EINVAL"
    assert g.store.check() == []


def test_directory_and_grub_probe(g: Guest) -> None:
    # GRUB's PV disk probe on a guest without disks.
    assert g.err(XS_DIRECTORY, args("device/vbd")) == "ENOENT"
    assert g.call(XS_DIRECTORY, args("device")).strings == [b"suspend"]
    g.store.write(f"{HOME}/data/k1", "")
    g.store.write(f"{HOME}/data/k2", "")
    assert g.call(XS_DIRECTORY, args("data")).strings == [b"k1", b"k2"]   # creation order
    assert g.ok(XS_DIRECTORY, args("data/k1")) == b""
    assert g.err(XS_DIRECTORY, args("/local/domain/2")) == "EACCES"
    assert g.err(XS_DIRECTORY, b"data") == "EINVAL"                 # no terminating NUL


def test_directory_part(g: Guest) -> None:
    names = [f"child-with-a-long-name-{i:04d}" + "x" * 60 for i in range(80)]   # ~7 KiB of names
    for n in names:
        g.store.write(f"{HOME}/data/big/{n}", "")
    got: list[bytes] = []
    gens = set()
    off = 0
    while True:
        parts = g.ok(XS_DIRECTORY_PART, args("data/big", str(off))).split(b"\0")
        gens.add(parts[0])
        chunk = parts[1:-1]
        if chunk and chunk[-1] == b"":                  # the last part ends with an empty string
            got += chunk[:-1]
            break
        got += chunk
        off += sum(len(c) + 1 for c in chunk)
    assert got == [n.encode() for n in names]
    assert len(gens) == 1
    gen = gens.pop()
    assert g.ok(XS_DIRECTORY_PART, args("data/big", "999999")) == gen + b"\0\0"
    assert g.err(XS_DIRECTORY_PART, args("data/big")) == "EINVAL"
    # Plain DIRECTORY cannot carry that many names: E2BIG, as xenstored's send_reply says.
    assert g.err(XS_DIRECTORY, args("data/big")) == "E2BIG"


def test_get_domain_path(g: Guest) -> None:
    assert g.ok(XS_GET_DOMAIN_PATH, args("5")) == b"/local/domain/5\0"
    assert g.ok(XS_GET_DOMAIN_PATH, args("junk")) == b"/local/domain/0\0"     # atoi()
    assert g.err(XS_GET_DOMAIN_PATH, b"5") == "EINVAL"


def test_atoi_like_glibc() -> None:
    assert _atoi(b"  -12x") == -12
    assert _atoi(b"") == 0 and _atoi(b"+") == 0 and _atoi(b"x1") == 0
    assert _atoi(b"4294967297") == 1                    # strtol fits in long, (int) truncates
    assert _atoi(b"9" * 40) == -1                       # saturates at LONG_MAX, truncates to -1
    assert _atoi(b"0" * 30 + b"7") == 7


# --- permissions -----------------------------------------------------------------------------------------

def test_get_and_set_perms(g: Guest) -> None:
    assert g.call(XS_GET_PERMS, args("control")).strings == [b"n0", b"r1"]
    g.ok(XS_WRITE, args("data/shared") + b"v")
    assert g.ok(XS_SET_PERMS, args("data/shared", "n1", "r2")) == b"OK\0"
    assert g.store.get_perms(f"{HOME}/data/shared") == ["n1", "r2"]
    assert g.err(XS_SET_PERMS, args("data/shared", "n2")) == "EPERM"      # no giving away
    assert g.err(XS_SET_PERMS, args("control/shutdown", "x1")) == "EINVAL"
    assert g.err(XS_SET_PERMS, args("data/shared", "r")) == "EINVAL"
    assert g.err(XS_SET_PERMS, args("data/shared")) == "EINVAL"
    assert g.err(XS_SET_PERMS, args("data/shared", *[f"r{i}" for i in range(1, 7)])) == "ENOSPC"
    assert g.err(XS_SET_PERMS, args("control", "n1")) == "EACCES"         # not the owner
    assert g.err(XS_GET_PERMS, args("@releaseDomain")) == "EACCES"
    assert g.store.get_perms("@releaseDomain") == ["n0"]


def test_other_domain_reads_what_it_is_granted(g: Guest) -> None:
    other = Guest(g.store, domid=2)
    g.ok(XS_WRITE, args("data/shared") + b"v")
    assert other.err(XS_READ, args(f"{HOME}/data/shared")) == "EACCES"
    g.ok(XS_SET_PERMS, args("data/shared", "n1", "r2"))
    assert other.ok(XS_READ, args(f"{HOME}/data/shared")) == b"v"
    assert other.err(XS_WRITE, args(f"{HOME}/data/shared") + b"w") == "EACCES"
    g.ok(XS_SET_PERMS, args("data/shared", "n1", "b2"))
    assert other.ok(XS_WRITE, args(f"{HOME}/data/shared") + b"w") == b"OK\0"
    assert g.store.get_perms(f"{HOME}/data/shared") == ["n1", "b2"]       # writing keeps the owner


def test_privileged_requests_refused_to_a_domu(g: Guest) -> None:
    for msg_type, payload in ((XS_INTRODUCE, args("3", "1234", "5")), (XS_RELEASE, args("2")),
                              (XS_IS_DOMAIN_INTRODUCED, args("1")), (XS_RESUME, args("2")),
                              (XS_SET_TARGET, args("2", "1")), (XS_CONTROL, args("print", "x"))):
        assert g.err(msg_type, payload) == "EACCES", msg_type


def test_dom0_connection_privileged_requests(g: Guest) -> None:
    dom0 = Guest(g.store, domid=0)
    assert dom0.ok(XS_IS_DOMAIN_INTRODUCED, args("1")) == b"T\0"
    assert dom0.ok(XS_IS_DOMAIN_INTRODUCED, args("7")) == b"F\0"
    assert dom0.ok(XS_INTRODUCE, args("7", "1234", "3")) == b"OK\0"
    assert g.store.is_introduced(7)
    assert dom0.ok(XS_RELEASE, args("7")) == b"OK\0"
    assert dom0.err(XS_RELEASE, args("7")) == "ENOENT"
    assert dom0.err(XS_INTRODUCE, args("7", "1234", "0")) == "EINVAL"
    assert dom0.ok(XS_READ, args("/local/domain/2/name")) == b"other"


def test_quotas(g: Guest) -> None:
    assert g.err(XS_WRITE, args("data/huge") + b"x" * 2100) == "ENOSPC"      # node size
    assert not g.store.exists(f"{HOME}/data/huge")
    assert g.err(XS_READ, args("data/" + "a" * 2100)) == "EINVAL"             # relative path length
    for i in range(129):                                                     # xenstored: "> 128"
        assert g.ok(XS_WATCH, args(f"data/w{i}", "t")) == b"OK\0"
    assert g.err(XS_WATCH, args("data/w-last", "t")) == "E2BIG"


def test_node_quota(g: Guest) -> None:
    # Spread the nodes over directories: one directory's child list is itself capped by the
    # 2048-byte node size, as in xenstored.
    i = 0
    while g.store.owned_count(DOMU) < 1000:
        assert g.ok(XS_WRITE, args(f"data/d{i // 100}/n{i % 100}")) == b"OK\0"
        i += 1
    assert g.err(XS_WRITE, args("data/d0/one-too-many")) == "ENOSPC"
    assert g.err(XS_WRITE, args("data/d0/n0") + b"rewriting is fine") is None
    assert g.store.check() == []


# --- watches ---------------------------------------------------------------------------------------------

def test_watch_fires_at_registration_after_the_reply(g: Guest) -> None:
    rid = g.send(XS_WATCH, args("control/shutdown", "tok"))
    msgs = g.drain()
    assert [(m.type, m.req_id) for m in msgs] == [(XS_WATCH, rid), (XS_WATCH_EVENT, 0)]
    assert msgs[1].strings == [b"control/shutdown", b"tok"]                 # relative in, relative out
    assert g.ok(XS_WATCH, args(f"{HOME}/memory", "abs")) == b"OK\0"
    assert g.take_events() == [(f"{HOME}/memory", "abs")]


def test_watch_fires_on_trusted_write(g: Guest) -> None:
    g.ok(XS_WATCH, args("control/shutdown", "sd"))
    g.take_events()
    g.store.write(f"{HOME}/control/shutdown", "poweroff")                  # the debugger, from outside
    assert g.take_events() == [("control/shutdown", "sd")]
    assert g.ok(XS_READ, args("control/shutdown")) == b"poweroff"


def test_watch_scope(g: Guest) -> None:
    g.ok(XS_WATCH, args("data/a", "t"))
    g.take_events()
    g.ok(XS_WRITE, args("data/a/b/c") + b"1")        # below: fires, with the changed path
    g.ok(XS_WRITE, args("data/ab") + b"1")           # a sibling with the same prefix: does not
    g.ok(XS_WRITE, args("data") + b"1")              # above: does not
    assert g.take_events() == [("data/a/b/c", "t")]
    g.ok(XS_WATCH, args("data/a/b/c", "deep"))
    g.take_events()
    g.ok(XS_RM, args("data/a"))                      # removed subtree: exact watches, then the root
    assert g.take_events() == [("data/a/b/c", "deep"), ("data/a", "t")]


def test_own_write_event_precedes_the_reply(g: Guest) -> None:
    g.ok(XS_WATCH, args("data", "t"))
    g.take_events()
    rid = g.send(XS_WRITE, args("data/x") + b"1")
    assert [(m.type, m.req_id) for m in g.drain()] == [(XS_WATCH_EVENT, 0), (XS_WRITE, rid)]


def test_watch_errors_and_unwatch(g: Guest) -> None:
    g.ok(XS_WATCH, args("data", "t"))
    assert g.err(XS_WATCH, args("data", "t")) == "EEXIST"
    assert g.ok(XS_WATCH, args("data", "t2")) == b"OK\0"                    # another token is fine
    assert g.err(XS_WATCH, args("data")) == "EINVAL"
    assert g.err(XS_WATCH, args("bad.path", "t")) == "EINVAL"
    assert g.ok(XS_UNWATCH, args("data", "t")) == b"OK\0"
    assert g.err(XS_UNWATCH, args("data", "t")) == "ENOENT"
    g.take_events()
    g.ok(XS_WRITE, args("data/x") + b"1")
    assert g.take_events() == [("data/x", "t2")]
    # WATCH ignores tx_id, even a bogus one.
    assert g.call(XS_WATCH, args("data/y", "t3"), tx_id=77).type == XS_WATCH


def test_watch_needs_read_permission(g: Guest) -> None:
    g.store.write("/local/domain/2/data/secret", "s")
    assert g.ok(XS_WATCH, args("/local/domain/2/data/secret", "peek")) == b"OK\0"
    assert g.take_events() == [("/local/domain/2/data/secret", "peek")]     # the registration event only
    g.store.write("/local/domain/2/data/secret", "t")
    assert g.take_events() == []
    g.store.set_perms("/local/domain/2/data/secret", ["n2", "r1"])
    assert g.take_events() == [("/local/domain/2/data/secret", "peek")]
    g.store.write("/local/domain/2/data/secret", "u")
    assert g.take_events() == [("/local/domain/2/data/secret", "peek")]


def test_special_watches(g: Guest) -> None:
    assert g.ok(XS_WATCH, args("@releaseDomain", "rel")) == b"OK\0"
    assert g.take_events() == [("@releaseDomain", "rel")]
    g.store.release_domain(2)
    assert g.take_events() == []                     # a domU may not see other domains die ...
    g.store.set_perms("@releaseDomain", ["n0", "r1"])
    g.take_events()
    g.store.introduce_domain(5)
    g.store.release_domain(5)
    assert g.take_events() == [("@releaseDomain", "rel")]                  # ... unless granted
    assert g.err(XS_READ, args("@releaseDomain")) == "EINVAL"               # not a node to read


def test_reset_watches(g: Guest) -> None:
    assert g.ok(XS_READ, args("control/platform-feature-xs_reset_watches")) == b"1"
    g.ok(XS_WATCH, args("data", "t"))
    tx = int(g.ok(XS_TRANSACTION_START, args("")).rstrip(b"\0"))
    assert g.ok(XS_RESET_WATCHES, args("")) == b"OK\0"
    g.take_events()
    g.store.write(f"{HOME}/data/x", "1")
    assert g.take_events() == []
    assert g.err(XS_READ, args("name"), tx_id=tx) == "ENOENT"


# --- transactions ----------------------------------------------------------------------------------------

def start(g: Guest) -> int:
    return int(g.ok(XS_TRANSACTION_START, args("")).rstrip(b"\0"))


def test_transaction_commit(g: Guest) -> None:
    g.ok(XS_WATCH, args("data", "t"))
    g.take_events()
    tx = start(g)
    assert tx == 1
    assert g.ok(XS_WRITE, args("data/a") + b"1", tx_id=tx) == b"OK\0"
    assert g.ok(XS_READ, args("data/a"), tx_id=tx) == b"1"                  # visible inside
    assert g.err(XS_READ, args("data/a")) == "ENOENT"                        # not outside
    assert not g.store.exists(f"{HOME}/data/a")
    assert g.take_events() == []                                             # events wait for commit
    changes: list[XsChange] = []
    g.store.on_change(changes.append)
    assert g.ok(XS_TRANSACTION_END, args("T"), tx_id=tx) == b"OK\0"
    assert g.store.read(f"{HOME}/data/a") == b"1"
    assert g.take_events() == [("data/a", "t")]
    assert changes == [XsChange("write", f"{HOME}/data/a", b"1", DOMU, tx)]
    assert g.err(XS_READ, args("data/a"), tx_id=tx) == "ENOENT"              # the id is gone
    assert g.store.check() == []


def test_transaction_abort(g: Guest) -> None:
    g.ok(XS_WATCH, args("data", "t"))
    g.take_events()
    tx = start(g)
    g.ok(XS_WRITE, args("data/a") + b"1", tx_id=tx)
    g.ok(XS_RM, args("console/tty"), tx_id=tx)
    assert g.ok(XS_TRANSACTION_END, args("F"), tx_id=tx) == b"OK\0"
    assert not g.store.exists(f"{HOME}/data/a")
    assert g.store.exists(f"{HOME}/console/tty")
    assert g.take_events() == []


def test_transaction_conflict_is_eagain(g: Guest) -> None:
    tx = start(g)
    assert g.ok(XS_READ, args("control/shutdown"), tx_id=tx) == b""
    g.ok(XS_WRITE, args("data/out") + b"1", tx_id=tx)
    g.store.write(f"{HOME}/control/shutdown", "reboot")                     # concurrent change
    assert g.err(XS_TRANSACTION_END, args("T"), tx_id=tx) == "EAGAIN"
    assert not g.store.exists(f"{HOME}/data/out")
    assert g.err(XS_TRANSACTION_END, args("T"), tx_id=tx) == "ENOENT"       # failed = gone
    # A sibling created outside changes the parent the transaction also changed: conflict.
    tx = start(g)
    g.ok(XS_WRITE, args("data/mine") + b"1", tx_id=tx)
    g.store.write(f"{HOME}/data/theirs", "2")
    assert g.err(XS_TRANSACTION_END, args("T"), tx_id=tx) == "EAGAIN"
    # Unrelated concurrent changes don't conflict.
    tx = start(g)
    g.ok(XS_WRITE, args("data/mine") + b"1", tx_id=tx)
    g.store.write(f"{HOME}/error/x", "2")
    assert g.ok(XS_TRANSACTION_END, args("T"), tx_id=tx) == b"OK\0"
    # A concurrent delete of something read is a conflict too.
    tx = start(g)
    g.ok(XS_READ, args("data/mine"), tx_id=tx)
    g.store.rm(f"{HOME}/data/mine")
    assert g.err(XS_TRANSACTION_END, args("T"), tx_id=tx) == "EAGAIN"
    assert g.store.check() == []


def test_two_guests_in_transactions(g: Guest) -> None:
    other = Guest(g.store, domid=2)
    t1 = start(g)
    t2 = start(other)
    g.ok(XS_WRITE, args("data/x") + b"1", tx_id=t1)
    other.ok(XS_WRITE, args("data/x") + b"2", tx_id=t2)
    assert g.ok(XS_TRANSACTION_END, args("T"), tx_id=t1) == b"OK\0"
    assert other.ok(XS_TRANSACTION_END, args("T"), tx_id=t2) == b"OK\0"     # disjoint trees
    assert g.store.read(f"{HOME}/data/x") == b"1"
    assert g.store.read("/local/domain/2/data/x") == b"2"


def test_transaction_errors(g: Guest) -> None:
    assert g.err(XS_TRANSACTION_END, args("T")) == "ENOENT"
    tx = start(g)
    assert g.err(XS_TRANSACTION_START, args(""), tx_id=tx) == "EBUSY"
    assert g.err(XS_TRANSACTION_END, args("X"), tx_id=tx) == "EINVAL"
    assert g.err(XS_TRANSACTION_END, b"T", tx_id=tx) == "EINVAL"
    assert g.err(XS_READ, args("name"), tx_id=999) == "ENOENT"
    for _ in range(10):                                                      # xenstored: "> 10"
        start(g)
    assert g.err(XS_TRANSACTION_START, args("")) == "ENOSPC"


# --- malformed input -------------------------------------------------------------------------------------

def test_malformed_requests_get_error_replies(g: Guest) -> None:
    before = g.store.snapshot()
    assert g.err(XS_READ, b"name") == "EINVAL"                   # unterminated
    assert g.err(XS_READ, b"") == "EINVAL"
    assert g.err(XS_READ, args("name", "extra")) == "EINVAL"     # two strings where one is wanted
    assert g.err(XS_READ, args("")) == "EINVAL"
    for bad in ("a.b", "a//b", "data/", "/", "sp ace", "@foo", "caf\u00e9"):
        if bad == "/":
            assert g.err(XS_READ, args(bad)) == "EACCES"
        else:
            assert g.err(XS_READ, args(bad)) == "EINVAL", bad
    for msg_type in (15, 16, 20, 23, 0xFFFF, 0xFFFFFFFF):        # events/errors to the daemon, holes
        assert g.err(msg_type, args("name")) == "ENOSYS", msg_type
    assert g.ok(XS_READ, args("name")) == b"guest"               # the connection survives
    assert g.store.snapshot() == before


def test_partial_message_waits(g: Guest) -> None:
    data = HDR.pack(XS_READ, 7, 0, 5) + b"name\0"
    g.put(data[:10])                                              # half a header
    assert not g.drain()
    g.put(data[10:18])                                            # header and two payload bytes
    assert not g.drain()
    g.put(data[18:])
    msgs = g.drain()
    assert msgs == [Msg(XS_READ, 7, 0, b"guest")]


@pytest.mark.parametrize("start_idx", [1020, 0xFFFFFFF8, 0x7FFFFFFE])
def test_messages_across_the_ring_wrap(start_idx: int) -> None:
    g = Guest(start=start_idx)
    for _ in range(40):                                           # wrap both rings several times
        assert g.ok(XS_READ, args("name")) == b"guest"
    assert g.ok(XS_WRITE, args("data/v") + b"z" * 1500) == b"OK\0"           # bigger than the ring
    assert g.ok(XS_READ, args("data/v")) == b"z" * 1500
    assert g.r32(XENSTORE_ERROR) == 0


def test_oversize_message_is_a_protocol_error(g: Guest) -> None:
    g.ok(XS_WATCH, args("data", "t"))
    g.take_events()
    before = g.store.snapshot()
    g.put(HDR.pack(XS_WRITE, 1, 0, 4097))
    assert g.ring.process() is True
    assert g.r32(XENSTORE_ERROR) == XENSTORE_ERROR_PROTO
    g.put(HDR.pack(XS_WRITE, 2, 0, 7) + b"data/x\0")               # ignored from now on
    assert g.drain() == []
    assert g.ring.process() is False
    assert g.store.snapshot() == before
    g.store.write(f"{HOME}/data/x", "1")                         # and its watches are gone
    assert g.drain() == []
    assert g.store.check() == []


def test_corrupted_request_indices(g: Guest) -> None:
    g.w32(XENSTORE_REQ_PROD, g.r32(XENSTORE_REQ_CONS) + 1025)
    assert g.ring.process() is True
    assert g.r32(XENSTORE_ERROR) == XENSTORE_ERROR_RINGIDX
    assert g.ring.error == XENSTORE_ERROR_RINGIDX
    assert g.drain() == []


def test_corrupted_response_indices(g: Guest) -> None:
    g.w32(XENSTORE_RSP_CONS, g.r32(XENSTORE_RSP_PROD) + 5)        # prod - cons wraps to ~4G
    g.send(XS_READ, args("name"))
    g.ring.process()
    assert g.r32(XENSTORE_ERROR) == XENSTORE_ERROR_RINGIDX


def test_reconnect_after_an_error(g: Guest) -> None:
    g.ok(XS_WATCH, args("data", "t"))
    g.w32(XENSTORE_REQ_PROD, 0xDEAD0000)
    g.ring.process()
    assert g.r32(XENSTORE_ERROR) == XENSTORE_ERROR_RINGIDX
    g.w32(XENSTORE_CONNECTION, XENSTORE_RECONNECT)
    assert g.ring.process() is True
    assert g.r32(XENSTORE_CONNECTION) == 0 and g.r32(XENSTORE_ERROR) == 0
    assert all(g.r32(o) == 0 for o in (XENSTORE_REQ_CONS, XENSTORE_REQ_PROD, XENSTORE_RSP_CONS,
                                       XENSTORE_RSP_PROD))
    g.rx.clear()
    g.events.clear()
    assert g.ok(XS_READ, args("name")) == b"guest"
    g.store.write(f"{HOME}/data/x", "1")
    assert g.take_events() == []                                  # watches did not survive


# --- flow control ----------------------------------------------------------------------------------------

def test_replies_queue_while_the_response_ring_is_full(g: Guest) -> None:
    g.store.write(f"{HOME}/data/big", "b" * 200)
    ids = list(range(1, 31))
    for rid in ids:                                               # 30 x 25 bytes, all queued at once
        g.put(HDR.pack(XS_READ, rid, 0, 9) + args("data/big"))
    assert g.ring.process() is True
    # rsp[] is full and xenstored stopped reading at 20 outstanding replies.
    assert (g.r32(XENSTORE_RSP_PROD) - g.r32(XENSTORE_RSP_CONS)) & 0xFFFFFFFF == 1024
    assert g.r32(XENSTORE_REQ_CONS) != g.r32(XENSTORE_REQ_PROD)
    assert g.ring.conn.pending_replies() == 20
    assert g.ring.process() is False                              # nothing can move until the guest reads
    msgs = g.drain()
    assert [m.req_id for m in msgs] == ids
    assert all(m.payload == b"b" * 200 for m in msgs)
    assert g.ring.pending_output() == 0


def test_identical_pending_events_are_merged(g: Guest) -> None:
    g.ok(XS_WATCH, args("data", "t"))
    g.take_events()
    g.store.write(f"{HOME}/data/big", "b" * 900)
    g.ok(XS_WATCH, args("data/big", "w"))                          # fill rsp[] with a large reply ...
    g.take_events()
    g.send(XS_READ, args("data/big"))
    g.send(XS_READ, args("data/big"))
    g.ring.process()
    for i in range(5):                                            # ... then change a node repeatedly
        g.store.write(f"{HOME}/data/x", str(i))
    assert g.take_events() == [("data/x", "t")]


def test_ring_over_a_numpy_frame() -> None:
    """The machine hands the ring a view of the guest's frame in its numpy-backed memory."""
    import numpy as np

    memory = np.zeros(3 * 4096, dtype=np.uint8)
    store = make_store()
    ring = XenStoreRing(store, DOMU, BytearrayPage(memory[4096:8192]))
    frame = memory[4096:8192]
    request = HDR.pack(XS_READ, 9, 0, 5) + b"name\0"
    frame[:len(request)] = np.frombuffer(request, dtype=np.uint8)
    frame[XENSTORE_REQ_PROD:XENSTORE_REQ_PROD + 4] = np.frombuffer(U32.pack(len(request)), np.uint8)
    assert ring.process() is True
    reply = bytes(frame[XENSTORE_RSP:XENSTORE_RSP + 21])
    assert HDR.unpack_from(reply) == (XS_READ, 9, 0, 5) and reply[16:] == b"guest"
    assert memory[:4096].sum() == 0 and memory[8192:].sum() == 0     # nothing outside the frame


def test_closed_ring_gets_no_events(g: Guest) -> None:
    g.ok(XS_WATCH, args("data", "t"))
    g.take_events()
    g.ring.close()
    g.store.write(f"{HOME}/data/x", "1")
    assert g.ring.pending_output() == 0


# --- the trusted side ------------------------------------------------------------------------------------

def test_trusted_api(g: Guest) -> None:
    s = g.store
    changes: list[XsChange] = []
    unsubscribe = s.on_change(changes.append)
    s.write("/vm/test/x", b"1")
    s.mkdir("/vm/test/dir")
    s.set_perms("/vm/test/x", ["n0", "r1"])
    s.rm("/vm/test")
    assert [c.op for c in changes] == ["write", "mkdir", "set_perms", "rm"]
    unsubscribe()
    s.write("/vm/y", "2")
    assert len(changes) == 4
    with pytest.raises(XenStoreError) as e:
        s.read("/nonexistent")
    assert e.value.name == "ENOENT"
    with pytest.raises(XenStoreError):
        s.write("bad..path", "x")
    assert s.ls(f"{HOME}/memory") == ["static-max", "target", "videoram"]
    snap = s.snapshot(f"{HOME}/memory")
    assert snap["perms"] == ["n0", "r1"]
    assert snap["children"]["target"] == {"value": b"262144", "perms": ["n0", "r1"], "children": {}}
    assert s.snapshot()["children"]["local"]["children"]["domain"]["children"]["1"]["children"]["name"][
        "value"] == b"guest"


def test_message_log(g: Guest) -> None:
    log: list[XsMessage] = []
    g.store.on_message(log.append)
    g.ok(XS_READ, args("name"))
    assert [(m.direction, m.type_name, m.payload) for m in log] == [
        ("in", "READ", b"name\0"), ("out", "READ", b"guest")]
    g.err(XS_READ, args("nope"))
    assert (log[-1].type_name, log[-1].payload) == ("ERROR", b"ENOENT\0")


def test_linux_like_boot_exchange(g: Guest) -> None:
    """What a Linux 6.1 domU does first, then a shutdown request from the debugger."""
    if g.ok(XS_READ, args("control/platform-feature-xs_reset_watches")) == b"1":
        assert g.ok(XS_RESET_WATCHES, args("")) == b"OK\0"
    g.ok(XS_WATCH, args("device", "FFFF8880_probe"))
    assert g.call(XS_DIRECTORY, args("device")).strings == [b"suspend"]
    assert g.call(XS_DIRECTORY, args("device/suspend")).strings == [b"event-channel"]
    assert g.err(XS_READ, args("device/suspend/event-channel/state")) == "ENOENT"
    g.ok(XS_WATCH, args("control/shutdown", "shutdown"))
    g.ok(XS_WATCH, args("memory/target", "balloon"))
    for feature in ("poweroff", "reboot"):
        g.ok(XS_WRITE, args(f"control/feature-{feature}") + b"1")
    assert g.take_events() == [("device", "FFFF8880_probe"), ("control/shutdown", "shutdown"),
                               ("memory/target", "balloon")]
    g.store.write(f"{HOME}/control/shutdown", "poweroff")
    assert g.take_events() == [("control/shutdown", "shutdown")]
    tx = start(g)
    assert g.ok(XS_READ, args("control/shutdown"), tx_id=tx) == b"poweroff"
    g.ok(XS_WRITE, args("control/shutdown") + b"", tx_id=tx)                  # acknowledge
    assert g.ok(XS_TRANSACTION_END, args("T"), tx_id=tx) == b"OK\0"
    assert g.store.read(f"{HOME}/control/shutdown") == b""
    assert g.take_events() == [("control/shutdown", "shutdown")]


# --- untrusted input, at random ----------------------------------------------------------------------------

def assert_sound(g: Guest) -> None:
    assert g.store.check() == []
    for off in (XENSTORE_REQ_CONS, XENSTORE_RSP_PROD):
        assert 0 <= g.r32(off) <= 0xFFFFFFFF
    # The trusted side still works on whatever the guest left behind.
    g.store.write("/tool/probe", "ok")
    assert g.store.read("/tool/probe") == b"ok"


# Junk that often looks like messages: plausible headers (small types and lengths) with random bodies
# whose length may or may not match, mixed with raw noise.
_chunk = st.one_of(
    st.binary(max_size=64),
    st.builds(lambda t, rid, tx, n, body: HDR.pack(t, rid, tx, n) + body,
              st.integers(0, 24), st.integers(0, 3), st.integers(0, 3), st.integers(0, 48),
              st.binary(max_size=48)),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(chunks=st.lists(_chunk, max_size=20), cons=st.integers(0, 0xFFFFFFFF),
       extra=st.integers(-8, 80), rsp_cons=st.integers(0, 0xFFFFFFFF), rsp_fill=st.integers(0, 1100))
def test_random_bytes_never_raise(chunks: list[bytes], cons: int, extra: int, rsp_cons: int,
                                  rsp_fill: int) -> None:
    g = Guest()
    g.ok(XS_WATCH, args("data", "t"))
    junk = b"".join(chunks)[:1024]
    for i, b in enumerate(junk):
        g.buf[XENSTORE_REQ + ((cons + i) & 1023)] = b
    g.w32(XENSTORE_REQ_CONS, cons)
    g.w32(XENSTORE_REQ_PROD, cons + max(0, len(junk) + extra))       # sometimes past the ring size
    g.w32(XENSTORE_RSP_CONS, rsp_cons)
    g.w32(XENSTORE_RSP_PROD, rsp_cons + rsp_fill)
    for _ in range(3):
        g.ring.process()
        g.w32(XENSTORE_RSP_CONS, g.r32(XENSTORE_RSP_PROD))        # the guest reads everything
    assert g.ring.error in (0, XENSTORE_ERROR_RINGIDX, XENSTORE_ERROR_PROTO)
    assert_sound(g)


_names = st.sampled_from(["name", "data", "data/a", "data/a/b", "data/c", "control/shutdown", "error/e",
                          "device/vbd", "/local/domain/2/data", "/", "@releaseDomain", "", "a//b", "x.y",
                          f"{HOME}/data/d"])
# Well-formed request shapes (number of path-like arguments); the generator then damages some.
_SHAPES = {XS_READ: 1, XS_WRITE: 1, XS_MKDIR: 1, XS_RM: 1, XS_DIRECTORY: 1, XS_DIRECTORY_PART: 1,
           XS_GET_PERMS: 1, XS_SET_PERMS: 1, XS_WATCH: 2, XS_UNWATCH: 2, XS_TRANSACTION_START: 0,
           XS_TRANSACTION_END: 0, XS_GET_DOMAIN_PATH: 0, XS_RESET_WATCHES: 0}


@st.composite
def _message(draw: st.DrawFn) -> tuple[int, int, bytes]:
    msg_type = draw(st.sampled_from(sorted(_SHAPES)))
    parts: list[str | bytes] = [draw(_names) for _ in range(_SHAPES[msg_type])]
    if msg_type == XS_WRITE:
        parts.append(draw(st.binary(max_size=16)))
    elif msg_type == XS_DIRECTORY_PART:
        parts.append(draw(st.sampled_from(["0", "3", "-1", "x", "99999"])))
    elif msg_type == XS_SET_PERMS:
        parts += draw(st.lists(st.sampled_from(["n1", "r2", "b0", "w1", "x", "r"]), max_size=7))
    elif msg_type == XS_TRANSACTION_END:
        parts.append(draw(st.sampled_from(["T", "F", "X"])))
    elif msg_type == XS_GET_DOMAIN_PATH:
        parts.append(draw(st.sampled_from(["1", "2", "junk"])))
    elif msg_type in (XS_TRANSACTION_START, XS_RESET_WATCHES):
        parts.append("")
    payload = args(*parts)
    damage = draw(st.integers(0, 9))
    if damage == 0:
        payload = payload[:-1]                                    # unterminated
    elif damage == 1:
        payload += draw(st.binary(max_size=8))                    # trailing garbage
    elif damage == 2:
        msg_type = draw(st.one_of(st.integers(0, 24), st.just(0xFFFFFFFF)))   # any type at all
    tx_id = draw(st.sampled_from([0] * 6 + [1, 2, 0xFFFFFFFF]))
    return msg_type, tx_id, payload


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(msgs=st.lists(_message(), max_size=25))
def test_random_messages_never_raise(msgs: list[tuple[int, int, bytes]]) -> None:
    g = Guest()
    g.ok(XS_WATCH, args("data", "t"))
    for msg_type, tx_id, payload in msgs:
        rid = g.send(msg_type, payload, tx_id)
        for m in g.drain():
            assert m.type in (msg_type, XS_ERROR, XS_WATCH_EVENT)
            if m.type != XS_WATCH_EVENT:
                assert m.req_id == rid
    assert g.ring.error == 0
    assert g.ok(XS_READ, args("name")) == b"guest"
    assert_sound(g)

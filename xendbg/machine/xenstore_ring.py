"""The xenstore wire protocol: request handlers, and the shared ring page a domain talks through.

A domain and xenstored share one 4 KiB page (``struct xenstore_domain_interface``, io/xs_wire.h,
docs/misc/xenstore-ring.txt): a 1 KiB request ring the guest produces into, a 1 KiB response ring we
produce into, four free-running u32 indices (``MASK = idx & 1023``), and three words of connection state.
Messages are a 16-byte ``xsd_sockmsg`` header and up to 4096 bytes of payload, so one message may need
several passes around a 1 KiB ring; like xenstored we consume what is there and keep the partial message
on our side.

:meth:`XenStoreRing.process` is called by the machine when the guest signals the store event channel (and
again whenever it may have made room); it returns True when the guest should be signalled back.

Everything on the page is written by an untrusted guest. The choices, all C xenstored's (``core.c``
``handle_input``, ``domain.c`` ``readchn``/``writechn``/``ignore_connection``), are:

* ``prod - cons > 1024`` on either ring: the indices are corrupt. Set ``error = XENSTORE_ERROR_RINGIDX`` and
  stop serving the connection (its watches, transactions and queued output are dropped).
* a header announcing ``len > XENSTORE_PAYLOAD_MAX``: ``error = XENSTORE_ERROR_PROTO``, same treatment.
  (oxenstored clamps the length to 4096 instead, which by its own comment leaves the connection in a
  bad state; stopping cleanly is what the error field exists for.)
* an unknown request type, or ``WATCH_EVENT``/``ERROR`` sent to the daemon: an ``ENOSYS`` error reply
  (xenstored's answer; the connection survives).
* missing NUL terminators or the wrong number of strings: ``EINVAL`` replies, per request as xenstored.
* an incomplete header or payload: we take the bytes (freeing ring space) but act only once the whole
  message is there.
* a guest that stops reading replies: once 20 replies are queued (xenstored's "outstanding" quota) we stop
  reading requests until it drains the ring; watch events are bounded and deduplicated.

A stopped connection can be revived with the reconnection feature, which we advertise: the guest sets
``connection = XENSTORE_RECONNECT`` and we reset both rings, forget the connection's watches and
transactions, clear ``error`` and set ``connection = XENSTORE_CONNECTED``.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from typing import Protocol

from xendbg.machine.abi.layout import (
    XENSTORE_CONNECTION,
    XENSTORE_ERROR,
    XENSTORE_REQ,
    XENSTORE_REQ_CONS,
    XENSTORE_REQ_PROD,
    XENSTORE_RING_SIZE,
    XENSTORE_RSP,
    XENSTORE_RSP_CONS,
    XENSTORE_RSP_PROD,
    XENSTORE_SERVER_FEATURES,
)
from xendbg.machine.abi.xen import DOMID_SELF
from xendbg.machine.xenstore import (
    PERM_READ,
    QUOTA_NODE_PERMS,
    QUOTA_OUTSTANDING,
    QUOTA_TRANSACTIONS,
    QUOTA_WATCHES,
    XENSTORE_PAYLOAD_MAX,
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
    XS_WRITE,
    XSD_ERRORS,
    XSD_SOCKMSG,
    Connection,
    Perm,
    Transaction,
    Watch,
    XenStore,
    XenStoreError,
    XsMessage,
)

XENSTORE_SERVER_FEATURE_RECONNECTION = 1
XENSTORE_SERVER_FEATURE_ERROR = 2
XENSTORE_CONNECTED = 0
XENSTORE_RECONNECT = 1
XENSTORE_ERROR_NONE = 0
XENSTORE_ERROR_COMM = 1
XENSTORE_ERROR_RINGIDX = 2
XENSTORE_ERROR_PROTO = 3
DEFAULT_FEATURES = XENSTORE_SERVER_FEATURE_RECONNECTION | XENSTORE_SERVER_FEATURE_ERROR

_U32 = struct.Struct("<I")
_MASK32 = 0xFFFFFFFF


# --- the requests -----------------------------------------------------------------------------------------

@dataclass
class _Request:
    store: XenStore
    conn: Connection
    type: int
    req_id: int
    tx_id: int
    payload: bytes
    tx: Transaction | None = None
    replied: bool = False

    @property
    def domid(self) -> int:
        return self.conn.domid

    def path(self, raw: bytes | None, allow_special: bool = False) -> str:
        return self.store.canonicalize(self.domid, raw, allow_special)

    def reply(self, payload: bytes) -> None:
        if len(payload) > XENSTORE_PAYLOAD_MAX:          # send_reply() turns this into E2BIG
            raise XenStoreError("E2BIG", "reply too long")
        self.conn.send(self.type, self.req_id, self.tx_id, payload)
        self.replied = True


_OK = b"OK\0"
_NOTID = 1      # the request ignores tx_id (XS_FLAG_NOTID)
_PRIV = 2       # privileged callers only (XS_FLAG_PRIV): a domU gets EACCES


def _onearg(payload: bytes) -> bytes | None:
    """The payload must be exactly one string with its NUL at the end (onearg)."""
    if not payload or payload.find(b"\0") != len(payload) - 1:
        return None
    return payload[:-1]


def _strings(payload: bytes) -> list[bytes]:
    """The NUL-terminated strings of a payload; trailing unterminated bytes are ignored (get_strings)."""
    return payload.split(b"\0")[:-1]


def _atoi(raw: bytes) -> int:
    """glibc ``atoi`` (``(int)strtol(s, NULL, 10)``): blanks, sign, digits; garbage reads as 0."""
    m = re.match(rb"[ \t\n\r\f\v]*([+-]?)0*(\d*)", raw)
    sign, digits = m.group(1), m.group(2)
    value = int(digits) if 0 < len(digits) <= 20 else (1 << 64 if digits else 0)
    value = max(-(1 << 63), min((1 << 63) - 1, -value if sign == b"-" else value))  # strtol saturates
    value &= _MASK32                                                                # then (int) truncates
    return value - (1 << 32) if value & 0x80000000 else value


def handle_request(store: XenStore, conn: Connection, msg_type: int, req_id: int, tx_id: int,
                   payload: bytes) -> None:
    """process_message(): execute one request; its reply (and any events) go to ``conn.outbox``."""
    store.emit_message(XsMessage("in", conn.domid, msg_type, req_id, tx_id, payload))
    req = _Request(store, conn, msg_type, req_id, tx_id, payload)
    try:
        entry = _HANDLERS.get(msg_type)
        if entry is None:
            # Unknown types, and WATCH_EVENT/ERROR sent *to* the daemon: xenstored says ENOSYS.
            raise XenStoreError("ENOSYS", f"unknown request type {msg_type}")
        handler, flags = entry
        if flags & _PRIV and not conn.privileged:
            raise XenStoreError("EACCES", "privileged request")
        if not flags & _NOTID and tx_id != 0:
            req.tx = conn.transactions.get(tx_id)
            if req.tx is None:
                raise XenStoreError("ENOENT", f"no transaction {tx_id}")
        handler(req)
    except XenStoreError as e:
        if not req.replied:
            name = e.name if e.name in XSD_ERRORS else "EINVAL"      # send_error()'s fallback
            conn.send(XS_ERROR, req_id, tx_id, name.encode() + b"\0")


def _do_read(req: _Request) -> None:
    name = req.path(_onearg(req.payload))
    req.reply(req.store.get_node(req.domid, req.tx, name, PERM_READ).value)


def _do_directory(req: _Request) -> None:
    node = req.store.get_node(req.domid, req.tx, req.path(_onearg(req.payload)), PERM_READ)
    req.reply(b"".join(c.encode() + b"\0" for c in node.children))


def _do_directory_part(req: _Request) -> None:
    """Children from a byte offset, after the node's generation count (send_directory_part)."""
    if req.payload.count(b"\0") != 2:
        raise XenStoreError("EINVAL", "DIRECTORY_PART wants <path>|<offset>|")
    path, offset = _strings(req.payload)[:2]
    node = req.store.get_node(req.domid, req.tx, req.path(path), PERM_READ)
    off = _atoi(offset) & _MASK32
    blob = b"".join(c.encode() + b"\0" for c in node.children)
    gen = str(node.generation).encode() + b"\0"
    if off >= len(blob):
        req.reply(gen + b"\0")                      # past the end: an empty list
        return
    maxlen = XENSTORE_PAYLOAD_MAX - len(gen) - 1
    length = 0
    while True:
        strlen = blob.find(b"\0", off + length) - (off + length)
        if length + strlen >= maxlen:
            break
        length += strlen + 1
        if off + length == len(blob):
            break
    done = off + length == len(blob)                # the last part ends with an empty string
    req.reply(gen + blob[off:off + length] + (b"\0" if done else b""))


def _do_get_perms(req: _Request) -> None:
    node = req.store.get_node(req.domid, req.tx, req.path(_onearg(req.payload), True), PERM_READ)
    req.reply(b"".join(str(p).encode() + b"\0" for p in node.perms))


def _do_write(req: _Request) -> None:
    cut = req.payload.find(b"\0")
    if cut < 0:
        raise XenStoreError("EINVAL", "WRITE wants <path>|<value>")
    req.store.op_write(req.domid, req.tx, req.path(req.payload[:cut]), req.payload[cut + 1:])
    req.reply(_OK)


def _do_mkdir(req: _Request) -> None:
    req.store.op_mkdir(req.domid, req.tx, req.path(_onearg(req.payload)))
    req.reply(_OK)


def _do_rm(req: _Request) -> None:
    req.store.op_rm(req.domid, req.tx, req.path(_onearg(req.payload)))
    req.reply(_OK)


def _do_set_perms(req: _Request) -> None:
    count = req.payload.count(b"\0")
    if count < 2:
        raise XenStoreError("EINVAL", "SET_PERMS wants <path>|<perm>|+")
    if req.domid != 0 and count - 1 > QUOTA_NODE_PERMS:
        raise XenStoreError("ENOSPC", "too many permissions")
    parts = req.payload.split(b"\0")
    perms = tuple(Perm.parse(p) for p in parts[1:count])
    req.store.op_set_perms(req.domid, req.tx, req.path(parts[0], True), perms)
    req.reply(_OK)


def _do_watch(req: _Request) -> None:
    args = _strings(req.payload)
    if len(args) != 2:
        raise XenStoreError("EINVAL", "WATCH wants <path>|<token>|")
    raw, token = args
    name = req.path(raw, True)
    conn = req.conn
    if any(w.path == name and w.token == token for w in conn.watches):
        raise XenStoreError("EEXIST", "duplicate watch")
    if not conn.privileged and len(conn.watches) > QUOTA_WATCHES:
        raise XenStoreError("E2BIG", "watch quota")
    # A relative watch gets relative event paths ("with the same base").
    relative = not raw.startswith((b"/", b"@"))
    watch = Watch(name, token, len(conn.home) + 1 if relative else 0)
    conn.watches.append(watch)
    req.reply(_OK)
    # "We fire once up front: simplifies clients and restart." -- after the OK, as xenstored does.
    conn.queue_event(name[watch.prefix_len:], token)


def _do_unwatch(req: _Request) -> None:
    args = _strings(req.payload)
    if len(args) != 2:
        raise XenStoreError("EINVAL", "UNWATCH wants <path>|<token>|")
    name = req.path(args[0], True)
    for i, w in enumerate(req.conn.watches):
        if w.path == name and w.token == args[1]:
            del req.conn.watches[i]
            req.reply(_OK)
            return
    raise XenStoreError("ENOENT", "no such watch")


def _do_transaction_start(req: _Request) -> None:
    if req.tx is not None:
        raise XenStoreError("EBUSY", "no nested transactions")
    if not req.conn.privileged and len(req.conn.transactions) > QUOTA_TRANSACTIONS:
        raise XenStoreError("ENOSPC", "transaction quota")
    tx = req.store.transaction_start(req.conn)
    req.reply(str(tx.tx_id).encode() + b"\0")


def _do_transaction_end(req: _Request) -> None:
    arg = _onearg(req.payload)
    if arg not in (b"T", b"F"):
        raise XenStoreError("EINVAL", "TRANSACTION_END wants T| or F|")
    tx = req.tx
    if tx is None:
        raise XenStoreError("ENOENT", "not in a transaction")
    del req.conn.transactions[tx.tx_id]             # gone whatever the outcome, EAGAIN included
    if arg == b"T":
        req.store.commit(tx)
    req.reply(_OK)


def _do_get_domain_path(req: _Request) -> None:
    arg = _onearg(req.payload)
    if arg is None:
        raise XenStoreError("EINVAL", "GET_DOMAIN_PATH wants <domid>|")
    req.reply(f"/local/domain/{_atoi(arg) & _MASK32}".encode() + b"\0")


def _do_reset_watches(req: _Request) -> None:
    req.conn.watches.clear()
    req.conn.transactions.clear()
    req.reply(_OK)


# The rest are the toolstack's requests (XS_FLAG_PRIV); a domU is refused before it gets here.

def _do_is_domain_introduced(req: _Request) -> None:
    arg = _onearg(req.payload)
    if arg is None:
        raise XenStoreError("EINVAL", "IS_DOMAIN_INTRODUCED wants <domid>|")
    domid = _atoi(arg)
    req.reply(b"T\0" if domid == DOMID_SELF or req.store.is_introduced(domid) else b"F\0")


def _do_introduce(req: _Request) -> None:
    args = _strings(req.payload)
    if len(args) < 3 or _atoi(args[2]) <= 0:
        raise XenStoreError("EINVAL", "INTRODUCE wants <domid>|<mfn>|<port>|")
    req.store.introduce_domain(_atoi(args[0]) & 0xFFFF)
    req.reply(_OK)


def _introduced_arg(req: _Request) -> int:
    arg = _onearg(req.payload)
    if arg is None or _atoi(arg) == 0:
        raise XenStoreError("EINVAL", "wants a domU's domid")
    if not req.store.is_introduced(_atoi(arg)):
        raise XenStoreError("ENOENT", "domain not introduced")
    return _atoi(arg)


def _do_release(req: _Request) -> None:
    req.store.release_domain(_introduced_arg(req))
    req.reply(_OK)


def _do_resume(req: _Request) -> None:
    _introduced_arg(req)
    req.reply(_OK)


def _do_set_target(req: _Request) -> None:
    raise XenStoreError("ENOSYS", "SET_TARGET (device-model stub domains) is not modelled")


def _do_control(req: _Request) -> None:
    raise XenStoreError("EINVAL", "no CONTROL commands")


# The dispatch table, as data (xenstored's wire_funcs[]): type -> (handler, flags).
_HANDLERS = {
    XS_CONTROL: (_do_control, _PRIV),
    XS_DIRECTORY: (_do_directory, 0),
    XS_READ: (_do_read, 0),
    XS_GET_PERMS: (_do_get_perms, 0),
    XS_WATCH: (_do_watch, _NOTID),
    XS_UNWATCH: (_do_unwatch, _NOTID),
    XS_TRANSACTION_START: (_do_transaction_start, 0),
    XS_TRANSACTION_END: (_do_transaction_end, 0),
    XS_INTRODUCE: (_do_introduce, _PRIV),
    XS_RELEASE: (_do_release, _PRIV),
    XS_GET_DOMAIN_PATH: (_do_get_domain_path, 0),
    XS_WRITE: (_do_write, 0),
    XS_MKDIR: (_do_mkdir, 0),
    XS_RM: (_do_rm, 0),
    XS_SET_PERMS: (_do_set_perms, 0),
    XS_IS_DOMAIN_INTRODUCED: (_do_is_domain_introduced, _PRIV),
    XS_RESUME: (_do_resume, _PRIV),
    XS_SET_TARGET: (_do_set_target, _PRIV),
    XS_RESET_WATCHES: (_do_reset_watches, 0),
    XS_DIRECTORY_PART: (_do_directory_part, 0),
}


# --- the shared page --------------------------------------------------------------------------------------

class SharedPage(Protocol):
    """What the ring needs of the guest's xenstore frame: byte reads and writes at page offsets."""

    def read(self, offset: int, n: int) -> bytes: ...

    def write(self, offset: int, data: bytes) -> None: ...


class BytearrayPage:
    """A :class:`SharedPage` over any writable buffer: a bytearray (tests), a memoryview or a numpy
    ``uint8`` view of the guest's machine frame (the machine)."""

    def __init__(self, buf: bytearray | memoryview | None = None) -> None:
        # Through a byte-format memoryview, slice assignment from bytes works for every buffer type.
        self.view = memoryview(bytearray(4096) if buf is None else buf).cast("B")

    def read(self, offset: int, n: int) -> bytes:
        return bytes(self.view[offset:offset + n])

    def write(self, offset: int, data: bytes) -> None:
        self.view[offset:offset + len(data)] = data


class XenStoreRing:
    """xenstored's end of one domain's ring: parse requests, run them, write replies and events."""

    def __init__(self, store: XenStore, domid: int, page: SharedPage, *,
                 features: int = DEFAULT_FEATURES) -> None:
        self.store = store
        self.page = page
        self.features = features
        self.conn = store.connect(domid)
        self.error = XENSTORE_ERROR_NONE          # ours is authoritative; the guest can scribble on the page
        self.error_reason = ""
        self._hdr = bytearray()                   # the message being received: header, then payload
        self._body = bytearray()
        self._len = 0
        # Advertised before any data moves, as the reconnection feature requires.
        self._w32(XENSTORE_SERVER_FEATURES, features)

    @property
    def domid(self) -> int:
        return self.conn.domid

    def pending_output(self) -> int:
        """Replies and events waiting for room in rsp[] (call :meth:`process` again when it drains)."""
        return len(self.conn.outbox)

    def close(self) -> None:
        self.store.disconnect(self.conn)

    def process(self) -> bool:
        """Serve the ring: write queued output, read and execute every complete request, repeat while
        anything moves. Returns True if the page changed (indices, error, connection state), i.e. the
        guest should be signalled on the store event channel."""
        if self.features & XENSTORE_SERVER_FEATURE_RECONNECTION and \
                self._r32(XENSTORE_CONNECTION) == XENSTORE_RECONNECT:
            self._reconnect()
            return True
        if self.error:
            return False                            # an ignored connection stays silent
        notify = False
        while True:
            progress = self._write_output()
            if not self.error and self.conn.pending_replies() < QUOTA_OUTSTANDING:
                progress = self._read_input() or progress
            notify = notify or progress
            if self.error:
                return True
            if not progress:
                return notify

    # --- input ---------------------------------------------------------------------------------------

    def _read_input(self) -> bool:
        cons = self._r32(XENSTORE_REQ_CONS)
        prod = self._r32(XENSTORE_REQ_PROD)
        avail = (prod - cons) & _MASK32
        if avail > XENSTORE_RING_SIZE:
            self._fail(XENSTORE_ERROR_RINGIDX, f"request indices cons={cons:#x} prod={prod:#x}")
            return False
        used = 0
        while used < avail and not self.error and self.conn.pending_replies() < QUOTA_OUTSTANDING:
            in_header = len(self._hdr) < XSD_SOCKMSG.size
            buf = self._hdr if in_header else self._body
            want = XSD_SOCKMSG.size - len(self._hdr) if in_header else self._len - len(self._body)
            take = min(want, avail - used)
            buf += self._ring_read(XENSTORE_REQ, cons + used, take)
            used += take
            if in_header and len(self._hdr) == XSD_SOCKMSG.size:
                self._len = XSD_SOCKMSG.unpack(self._hdr)[3]
                if self._len > XENSTORE_PAYLOAD_MAX:
                    self._fail(XENSTORE_ERROR_PROTO, f"payload length {self._len}")
                    break
            if len(self._hdr) == XSD_SOCKMSG.size and len(self._body) == self._len:
                msg_type, req_id, tx_id, _ = XSD_SOCKMSG.unpack(self._hdr)
                payload = bytes(self._body)
                self._hdr.clear()
                self._body.clear()
                handle_request(self.store, self.conn, msg_type, req_id, tx_id, payload)
        if used:
            self._w32(XENSTORE_REQ_CONS, cons + used)
        return used > 0

    def _ring_read(self, base: int, idx: int, n: int) -> bytes:
        off = idx & (XENSTORE_RING_SIZE - 1)
        first = min(n, XENSTORE_RING_SIZE - off)
        data = self.page.read(base + off, first)
        return data + self.page.read(base, n - first) if n > first else data

    # --- output --------------------------------------------------------------------------------------

    def _write_output(self) -> bool:
        wrote = False
        outbox = self.conn.outbox
        while outbox:
            cons = self._r32(XENSTORE_RSP_CONS)
            prod = self._r32(XENSTORE_RSP_PROD)
            used = (prod - cons) & _MASK32
            if used > XENSTORE_RING_SIZE:
                self._fail(XENSTORE_ERROR_RINGIDX, f"response indices cons={cons:#x} prod={prod:#x}")
                return wrote
            free = XENSTORE_RING_SIZE - used
            if not free:
                break
            msg = outbox[0]
            chunk = msg.data[msg.sent:msg.sent + free]
            off = prod & (XENSTORE_RING_SIZE - 1)
            first = min(len(chunk), XENSTORE_RING_SIZE - off)
            self.page.write(XENSTORE_RSP + off, chunk[:first])
            if len(chunk) > first:
                self.page.write(XENSTORE_RSP, chunk[first:])
            # The data is in place before the index that publishes it (xenstored's xen_mb()).
            self._w32(XENSTORE_RSP_PROD, prod + len(chunk))
            msg.sent += len(chunk)
            wrote = True
            if msg.sent == len(msg.data):
                outbox.popleft()
        return wrote

    # --- connection state ----------------------------------------------------------------------------

    def _fail(self, error: int, reason: str) -> None:
        """ignore_connection(): report ``error`` on the page and stop serving this connection."""
        self.error = error
        self.error_reason = reason
        self._w32(XENSTORE_ERROR, error)
        self.conn.reset()
        self._hdr.clear()
        self._body.clear()

    def _reconnect(self) -> None:
        """The guest asked for a fresh connection: empty rings, no watches, transactions or errors."""
        self.conn.reset()
        self._hdr.clear()
        self._body.clear()
        for off in (XENSTORE_REQ_CONS, XENSTORE_REQ_PROD, XENSTORE_RSP_CONS, XENSTORE_RSP_PROD):
            self._w32(off, 0)
        self.error = XENSTORE_ERROR_NONE
        self.error_reason = ""
        self._w32(XENSTORE_ERROR, XENSTORE_ERROR_NONE)
        self._w32(XENSTORE_CONNECTION, XENSTORE_CONNECTED)

    def _r32(self, off: int) -> int:
        return _U32.unpack(self.page.read(off, 4))[0]

    def _w32(self, off: int, value: int) -> None:
        self.page.write(off, _U32.pack(value & _MASK32))

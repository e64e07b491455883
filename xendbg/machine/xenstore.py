"""The xenstore database, in process: xendbg is the whole machine, so it is also the guest's xenstored.

This module is the daemon's store: a tree of nodes with xenstored's permission model, watches,
transactions, the operations the request handlers call (``op_write``, ``get_node``, ...) and a trusted
API for the hypervisor and the debugger, which act as dom0 and are never refused. The wire protocol (the
request handlers and the shared ring page) lives in :mod:`xendbg.machine.xenstore_ring`.

Behaviour follows C xenstored (``tools/xenstored/{core,watch,transaction,domain}.c``) because that is the
default daemon a Linux guest meets under ``xl``. Where it differs from oxenstored or from the protocol
document (``docs/misc/xenstore.txt``), the C daemon wins, and the choice is noted at the spot:

* **The database is flat**: absolute path -> immutable :class:`Node` (value, permissions, child names in
  creation order, generation), exactly like xenstored's TDB/hashtable. The special nodes
  ``@introduceDomain`` and ``@releaseDomain`` live in the same table, outside the tree, and only carry
  the permissions that gate their watch events.
* **Permissions** (``perm_for_conn``): domid 0 and the owner (first entry) get everything; otherwise the
  first later entry naming the caller applies, else the first entry's access is everybody's default.
  A refused or missing node reports ``ENOENT`` only if the caller could have learnt that from the
  nearest existing ancestor; otherwise ``EACCES`` (``errno_from_parents``), so a domU cannot probe
  other domains' trees.
* **Transactions** copy the table at start ("when transaction is started whole db is copied") and record
  the generation of every node they touch. Commit fails with ``EAGAIN`` if any of those nodes changed
  globally meanwhile, which is xenstored's generation-count rule; a failed or aborted transaction is gone.
* **Watches** fire once when registered (after the ``OK`` reply), then for every change at or below their
  path; inside a transaction, only at commit. A watcher must be able to read the node or its parent.
  Removing a subtree fires each removed node's exact watches, then the root's watches (``delnode_sub``).
* **Quotas** are C xenstored's defaults for unprivileged callers (1000 nodes, 128 watches, 10
  transactions, 5 permissions and 2048 bytes per node, 2048-byte relative path) and are reported with
  xenstored's strings (``ENOSPC``, ``E2BIG``), never oxenstored's ``EQUOTA``, which Linux does not know.

Every refusal is a :class:`XenStoreError` carrying xenstored's errno string; the protocol module turns it
into an ``XS_ERROR`` reply. This module never prints and imports nothing from the UI.
"""

from __future__ import annotations

import re
import struct
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace

# --- io/xs_wire.h ---------------------------------------------------------------------------------------

XS_CONTROL = 0
XS_DIRECTORY = 1
XS_READ = 2
XS_GET_PERMS = 3
XS_WATCH = 4
XS_UNWATCH = 5
XS_TRANSACTION_START = 6
XS_TRANSACTION_END = 7
XS_INTRODUCE = 8
XS_RELEASE = 9
XS_GET_DOMAIN_PATH = 10
XS_WRITE = 11
XS_MKDIR = 12
XS_RM = 13
XS_SET_PERMS = 14
XS_WATCH_EVENT = 15
XS_ERROR = 16
XS_IS_DOMAIN_INTRODUCED = 17
XS_RESUME = 18
XS_SET_TARGET = 19
XS_RESET_WATCHES = 21
XS_DIRECTORY_PART = 22
XS_TYPE_COUNT = 23

XS_TYPE_NAMES = {
    XS_CONTROL: "CONTROL", XS_DIRECTORY: "DIRECTORY", XS_READ: "READ", XS_GET_PERMS: "GET_PERMS",
    XS_WATCH: "WATCH", XS_UNWATCH: "UNWATCH", XS_TRANSACTION_START: "TRANSACTION_START",
    XS_TRANSACTION_END: "TRANSACTION_END", XS_INTRODUCE: "INTRODUCE", XS_RELEASE: "RELEASE",
    XS_GET_DOMAIN_PATH: "GET_DOMAIN_PATH", XS_WRITE: "WRITE", XS_MKDIR: "MKDIR", XS_RM: "RM",
    XS_SET_PERMS: "SET_PERMS", XS_WATCH_EVENT: "WATCH_EVENT", XS_ERROR: "ERROR",
    XS_IS_DOMAIN_INTRODUCED: "IS_DOMAIN_INTRODUCED", XS_RESUME: "RESUME", XS_SET_TARGET: "SET_TARGET",
    XS_RESET_WATCHES: "RESET_WATCHES", XS_DIRECTORY_PART: "DIRECTORY_PART",
}

XSD_SOCKMSG = struct.Struct("<IIII")        # type, req_id, tx_id, len
XENSTORE_PAYLOAD_MAX = 4096
XENSTORE_ABS_PATH_MAX = 3072
XENSTORE_REL_PATH_MAX = 2048

# The error strings a client can decode (xsd_errors[] in xs_wire.h). Anything else is sent as EINVAL,
# as xenstored's send_error() does.
XSD_ERRORS = ("EINVAL", "EACCES", "EEXIST", "EISDIR", "ENOENT", "ENOMEM", "ENOSPC", "EIO", "ENOTEMPTY",
              "ENOSYS", "EROFS", "EBUSY", "EAGAIN", "EISCONN", "E2BIG", "EPERM")

# Permission bits (xenstore_lib.h).
PERM_NONE = 0
PERM_READ = 1
PERM_WRITE = 2
PERM_OWNER = 8
_ACCESS_BITS = {"n": PERM_NONE, "r": PERM_READ, "w": PERM_WRITE, "b": PERM_READ | PERM_WRITE}

# C xenstored's default hard quotas for unprivileged domains (domain.c: hard_quotas[]).
QUOTA_NODES = 1000
QUOTA_WATCHES = 128
QUOTA_OUTSTANDING = 20
QUOTA_TRANSACTIONS = 10
QUOTA_NODE_PERMS = 5
QUOTA_NODE_SIZE = 2048
# xenstored bounds queued watch events by a memory quota; we bound their number.
MAX_QUEUED_EVENTS = 1024

SPECIAL_NODES = ("@introduceDomain", "@releaseDomain")
_VALID_CHARS = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-/_@")
_LOCAL_DOMAIN = re.compile(r"/local/domain/\d{1,5}/")
_NODE_HDR_SIZE = 16      # struct node_hdr: generation u64, num_perms u16, datalen u16, childlen u32
_PERM_SIZE = 8           # struct xs_permissions: id, perms


class XenStoreError(Exception):
    """A request failed; ``name`` is the errno string that goes into the ``XS_ERROR`` reply."""

    def __init__(self, name: str, why: str = "") -> None:
        super().__init__(f"{name}: {why}" if why else name)
        self.name = name
        self.why = why


@dataclass(frozen=True)
class Perm:
    """One permission entry: ``n``/``r``/``w``/``b`` for a domid (wire form ``"r1"``)."""

    domid: int
    access: str

    @property
    def bits(self) -> int:
        return _ACCESS_BITS[self.access]

    def __str__(self) -> str:
        return f"{self.access}{self.domid}"

    @classmethod
    def parse(cls, text: str | bytes) -> Perm:
        """Parse ``"r1"``; xenstored uses ``strtol(.., 0)``, we accept a decimal domid only (0..65535)."""
        raw = text.encode() if isinstance(text, str) else text
        if len(raw) < 2 or chr(raw[0]) not in _ACCESS_BITS or not raw[1:].isdigit() or len(raw) > 7:
            raise XenStoreError("EINVAL", f"bad permission {raw!r}")
        domid = int(raw[1:])
        if domid > 0xFFFF:
            raise XenStoreError("EINVAL", f"bad permission {raw!r}")
        return cls(domid, chr(raw[0]))


@dataclass(frozen=True)
class Node:
    """A node as stored: immutable, so a transaction's copy of the table can share them."""

    value: bytes
    perms: tuple[Perm, ...]
    children: tuple[str, ...] = ()
    generation: int = 0

    @property
    def owner(self) -> int:
        return self.perms[0].domid

    def acc_size(self) -> int:
        """The size xenstored charges against the node-size quota (calc_node_acc_size)."""
        return (_NODE_HDR_SIZE + _PERM_SIZE * len(self.perms) + len(self.value)
                + sum(len(c) + 1 for c in self.children))


@dataclass(frozen=True)
class XsChange:
    """One change applied to the global tree (transactions report theirs when they commit)."""

    op: str                 # "write", "mkdir", "rm", "set_perms"
    path: str
    value: bytes | None
    domid: int
    tx_id: int = 0


@dataclass(frozen=True)
class XsMessage:
    """One message on a connection: ``direction`` is ``"in"`` (request) or ``"out"`` (reply/event)."""

    direction: str
    domid: int
    type: int
    req_id: int
    tx_id: int
    payload: bytes

    @property
    def type_name(self) -> str:
        return XS_TYPE_NAMES.get(self.type, f"type{self.type}")


@dataclass
class Watch:
    """A registered watch: fires for changes at or below ``path``."""

    path: str               # canonical: absolute, or "@special"
    token: bytes
    prefix_len: int         # chars stripped from event paths (relative watches get relative events)


@dataclass
class Transaction:
    """An open transaction: its copy of the table and what it touched (for the commit-time check)."""

    tx_id: int
    nodes: dict[str, Node]
    seen: dict[str, int | None] = field(default_factory=dict)       # generation at first access
    orig_perms: dict[str, tuple[Perm, ...] | None] = field(default_factory=dict)
    modified: dict[str, None] = field(default_factory=dict)         # ordered set
    watches: dict[str, bool] = field(default_factory=dict)          # path -> exact, fired at commit
    changes: list[XsChange] = field(default_factory=list)


class OutMessage:
    """A queued reply or event; the ring may write it in pieces (``sent`` bytes so far)."""

    __slots__ = ("data", "sent", "event")

    def __init__(self, data: bytes, event: bool) -> None:
        self.data = data
        self.sent = 0
        self.event = event


class Connection:
    """One client of the store (a domain's ring): its watches, transactions and output queue."""

    def __init__(self, store: XenStore, domid: int) -> None:
        self.store = store
        self.domid = domid
        self.watches: list[Watch] = []
        self.transactions: dict[int, Transaction] = {}
        self.next_tx_id = 0
        self.outbox: deque[OutMessage] = deque()

    @property
    def privileged(self) -> bool:
        return self.domid == 0

    @property
    def home(self) -> str:
        return f"/local/domain/{self.domid}"

    def pending_replies(self) -> int:
        """Replies not yet fully on the ring (xenstored's "outstanding requests")."""
        return sum(1 for m in self.outbox if not m.event)

    def send(self, msg_type: int, req_id: int, tx_id: int, payload: bytes) -> None:
        self.outbox.append(OutMessage(XSD_SOCKMSG.pack(msg_type, req_id, tx_id, len(payload)) + payload,
                                      event=False))
        self.store.emit_message(XsMessage("out", self.domid, msg_type, req_id, tx_id, payload))

    def queue_event(self, path: str, token: bytes) -> None:
        payload = path.encode() + b"\0" + token + b"\0"
        if len(payload) > XENSTORE_PAYLOAD_MAX:
            return                          # send_event(): "Don't try to send over-long events"
        data = XSD_SOCKMSG.pack(XS_WATCH_EVENT, 0, 0, len(payload)) + payload
        events = [m for m in self.outbox if m.event]
        # xenstored drops an event identical to one still queued (special paths excepted).
        if not path.startswith("@") and any(m.data == data for m in events):
            return
        if len(events) >= MAX_QUEUED_EVENTS:
            return
        self.outbox.append(OutMessage(data, event=True))
        self.store.emit_message(XsMessage("out", self.domid, XS_WATCH_EVENT, 0, 0, payload))

    def reset(self) -> None:
        """Forget watches, transactions and queued output (ring reconnect, connection error)."""
        self.watches.clear()
        self.transactions.clear()
        self.outbox.clear()


class _View:
    """The table a request works on (global, or a transaction's copy), recording what it touches."""

    __slots__ = ("nodes", "tx")

    def __init__(self, nodes: dict[str, Node], tx: Transaction | None) -> None:
        self.nodes = nodes
        self.tx = tx

    def get(self, path: str) -> Node | None:
        node = self.nodes.get(path)
        tx = self.tx
        if tx is not None and path not in tx.seen:
            tx.seen[path] = node.generation if node is not None else None
            tx.orig_perms[path] = node.perms if node is not None else None
        return node

    def put(self, path: str, node: Node) -> None:
        self.get(path)
        self.nodes[path] = node
        if self.tx is not None:
            self.tx.modified[path] = None

    def delete(self, path: str) -> None:
        self.get(path)
        self.nodes.pop(path, None)
        if self.tx is not None:
            self.tx.modified[path] = None


def parent_of(path: str) -> str:
    """``/a/b`` -> ``/a``; ``/a`` and ``@special`` -> ``/`` (get_parent)."""
    cut = path.rfind("/", 1)
    return path[:cut] if cut > 0 else "/"


def _join(parent: str, child: str) -> str:
    return f"/{child}" if parent == "/" else f"{parent}/{child}"


def _is_child(child: str, parent: str) -> bool:
    """At or below ``parent``; ``/`` contains everything, even special paths (watch.c is_child)."""
    if parent == "/":
        return True
    return child == parent or child.startswith(parent + "/")


def _perm_for(domid: int, perms: tuple[Perm, ...]) -> int:
    """perm_for_conn(): what ``domid`` may do with a node carrying ``perms``."""
    if domid == 0 or perms[0].domid == domid:
        return PERM_READ | PERM_WRITE | PERM_OWNER
    for p in perms[1:]:
        if p.domid == domid:
            return p.bits
    return perms[0].bits


class XenStore:
    """The store, shared by every connection and by the trusted (hypervisor/debugger) side."""

    def __init__(self) -> None:
        self._generation = 0
        root_perms = (Perm(0, "n"),)
        # setup_structure(): "/", /tool/xenstored and the two special nodes, all owned by dom0.
        self._nodes: dict[str, Node] = {
            "/": Node(b"", root_perms, ("tool",), self._next_gen()),
            "/tool": Node(b"", root_perms, ("xenstored",), self._next_gen()),
            "/tool/xenstored": Node(b"", root_perms, (), self._next_gen()),
        }
        for special in SPECIAL_NODES:
            self._nodes[special] = Node(b"", root_perms, (), self._next_gen())
        self._connections: list[Connection] = []
        self._introduced: set[int] = set()
        self._change_cbs: list[Callable[[XsChange], None]] = []
        self._message_cbs: list[Callable[[XsMessage], None]] = []
        self.changes: deque[XsChange] = deque(maxlen=1000)      # recent changes, for display

    # --- subscriptions and connections -----------------------------------------------------------------

    def on_change(self, callback: Callable[[XsChange], None]) -> Callable[[], None]:
        """Call ``callback`` for every change to the global tree; returns an unsubscribe function."""
        self._change_cbs.append(callback)
        return lambda: self._change_cbs.remove(callback)

    def on_message(self, callback: Callable[[XsMessage], None]) -> Callable[[], None]:
        """Call ``callback`` for every request, reply and watch event; returns an unsubscribe function."""
        self._message_cbs.append(callback)
        return lambda: self._message_cbs.remove(callback)

    def connect(self, domid: int) -> Connection:
        conn = Connection(self, domid)
        self._connections.append(conn)
        return conn

    def disconnect(self, conn: Connection) -> None:
        if conn in self._connections:
            self._connections.remove(conn)
        conn.reset()

    def emit_message(self, msg: XsMessage) -> None:
        """Report one message to the subscribers (called by connections and the protocol module)."""
        for cb in list(self._message_cbs):
            cb(msg)

    def _emit_change(self, change: XsChange) -> None:
        self.changes.append(change)
        for cb in list(self._change_cbs):
            cb(change)

    def _next_gen(self) -> int:
        self._generation += 1
        return self._generation

    # --- path and permission rules ---------------------------------------------------------------------

    @staticmethod
    def canonicalize(domid: int, raw: bytes | None, allow_special: bool) -> str:
        """canonicalize(): validate a path from ``domid`` and make it absolute, else EINVAL."""
        if raw is None or not all(b in _VALID_CHARS for b in raw):
            raise XenStoreError("EINVAL", "invalid path")
        if raw.startswith(b"@") and not allow_special:
            raise XenStoreError("EINVAL", "special path not allowed here")
        name = raw.decode("ascii")
        if not name.startswith(("/", "@")):
            name = f"/local/domain/{domid}/{name}"
        if (name.endswith("/") and name != "/") or "//" in name:
            raise XenStoreError("EINVAL", "invalid path")
        m = _LOCAL_DOMAIN.match(name)
        local_off = m.end() if m else 0
        # The length quota applies to the part below a domain's home, for unprivileged callers only.
        if domid != 0 and len(name) - local_off > XENSTORE_REL_PATH_MAX:
            raise XenStoreError("EINVAL", "path too long")
        return name

    def _ask_parents(self, view: _View, domid: int, path: str) -> int:
        """What the nearest existing ancestor lets ``domid`` do (ask_parents)."""
        while path != "/":
            path = parent_of(path)
            node = view.get(path)
            if node is not None:
                return _perm_for(domid, node.perms)
        return PERM_NONE                                        # no root: cannot happen

    def get_node(self, domid: int, tx: Transaction | None, path: str, need: int) -> Node:
        """get_node(): the node at canonical ``path`` if ``domid`` may ``need`` it, else ENOENT/EACCES."""
        return self._get_chk(self._view(tx), domid, path, need)

    def _get_chk(self, view: _View, domid: int, path: str, need: int) -> Node:
        node = view.get(path)
        if node is not None and (_perm_for(domid, node.perms) & need) == need:
            return node
        err = "ENOENT" if node is None else "EACCES"
        # Don't tell a caller that a node exists (or not) unless the parents would have told it anyway.
        if not self._ask_parents(view, domid, path) & need:
            err = "EACCES"
        raise XenStoreError(err, path)

    def _write_node(self, view: _View, domid: int, path: str, node: Node, quota: bool = True) -> None:
        if quota and domid != 0 and node.acc_size() > QUOTA_NODE_SIZE:
            raise XenStoreError("ENOSPC", f"node {path} too big")
        view.put(path, replace(node, generation=self._next_gen()))

    def _view(self, tx: Transaction | None) -> _View:
        return _View(tx.nodes if tx is not None else self._nodes, tx)

    # --- the operations, shared by the wire handlers and the trusted API -------------------------------
    # They take a canonical path, the caller's domid and its transaction (None: the global tree).

    def _create(self, view: _View, domid: int, name: str, value: bytes) -> None:
        """create_node(): make ``name`` and any missing parents, which inherit their parent's perms."""
        missing = [name]
        while True:
            parent_path = parent_of(missing[-1])
            parent = view.get(parent_path)
            if parent is not None:
                break
            missing.append(parent_path)
        if domid != 0:
            owned = sum(1 for n in view.nodes.values() if n.owner == domid)
            if owned + len(missing) > QUOTA_NODES:
                raise XenStoreError("ENOSPC", "node quota")
        perms = parent.perms
        if domid != 0:                              # "unpriv domains own what they create"
            perms = (Perm(domid, perms[0].access),) + perms[1:]
        # Build every new node first and check every quota, so a refusal leaves the tree untouched.
        writes: list[tuple[str, Node]] = [
            (parent_path, replace(parent, children=parent.children + (missing[-1].rsplit("/", 1)[1],)))]
        for i in range(len(missing) - 1, -1, -1):
            path = missing[i]
            children = (missing[i - 1].rsplit("/", 1)[1],) if i else ()
            writes.append((path, Node(value if i == 0 else b"", perms, children)))
        if domid != 0 and any(n.acc_size() > QUOTA_NODE_SIZE for _, n in writes):
            raise XenStoreError("ENOSPC", "node too big")
        for path, node in writes:
            self._write_node(view, domid, path, node, quota=False)

    def op_write(self, domid: int, tx: Transaction | None, name: str, value: bytes) -> None:
        """WRITE: set the value, creating the node and its missing parents."""
        view = self._view(tx)
        try:
            node = self._get_chk(view, domid, name, PERM_WRITE)
        except XenStoreError as e:
            if e.name != "ENOENT":
                raise
            self._create(view, domid, name, value)
        else:
            self._write_node(view, domid, name, replace(node, value=value))
        self._changed(view, XsChange("write", name, value, domid))
        self._fire(view.tx, name, exact=False, node_perms=view.nodes[name].perms)

    def op_mkdir(self, domid: int, tx: Transaction | None, name: str) -> None:
        """MKDIR: make sure the node exists; an existing one is left alone."""
        view = self._view(tx)
        try:
            self._get_chk(view, domid, name, PERM_WRITE)
            return                                              # already there: fine, no event
        except XenStoreError as e:
            if e.name != "ENOENT":
                raise
        self._create(view, domid, name, b"")
        self._changed(view, XsChange("mkdir", name, None, domid))
        self._fire(view.tx, name, exact=False, node_perms=view.nodes[name].perms)

    def op_rm(self, domid: int, tx: Transaction | None, name: str) -> None:
        """RM: remove the node and its subtree; a missing node is fine if its parent exists."""
        view = self._view(tx)
        try:
            self._get_chk(view, domid, name, PERM_WRITE)
        except XenStoreError as e:
            # Removing what isn't there is fine, as long as its parent exists.
            if e.name == "ENOENT" and view.get(parent_of(name)) is not None:
                return
            raise
        if name == "/":
            raise XenStoreError("EINVAL", "cannot remove /")
        parent_path = parent_of(name)
        parent = view.get(parent_path)
        if parent is None:
            raise XenStoreError("EINVAL", "no parent")
        # Post-order walk without recursion: a guest may nest ~1000 levels deep.
        order: list[tuple[str, Node]] = []
        stack = [name]
        while stack:
            path = stack.pop()
            node = view.get(path)
            if node is None:
                continue
            order.append((path, node))
            stack.extend(_join(path, c) for c in node.children)
        for path, node in reversed(order):
            view.delete(path)
            self._fire(view.tx, path, exact=path != name, node_perms=node.perms)
        base = name.rsplit("/", 1)[1]
        self._write_node(view, domid, parent_path,
                         replace(parent, children=tuple(c for c in parent.children if c != base)),
                         quota=False)
        self._changed(view, XsChange("rm", name, None, domid))

    def op_set_perms(self, domid: int, tx: Transaction | None, name: str, perms: tuple[Perm, ...]) -> None:
        """SET_PERMS: only the owner (or dom0); an unprivileged owner may not give the node away."""
        view = self._view(tx)
        if domid != 0 and len(perms) > QUOTA_NODE_PERMS:
            raise XenStoreError("ENOSPC", "too many permissions")
        node = self._get_chk(view, domid, name, PERM_WRITE | PERM_OWNER)
        if domid != 0 and perms[0].domid != node.owner:
            raise XenStoreError("EPERM", "unprivileged domains may not change the owner")
        self._write_node(view, domid, name, replace(node, perms=perms))
        self._changed(view, XsChange("set_perms", name, ",".join(map(str, perms)).encode(), domid))
        self._fire(view.tx, name, exact=False, node_perms=perms, old_perms=node.perms)

    def _changed(self, view: _View, change: XsChange) -> None:
        if view.tx is not None:
            view.tx.changes.append(replace(change, tx_id=view.tx.tx_id))
        else:
            self._emit_change(change)

    # --- watches -------------------------------------------------------------------------------------

    def _fire(self, tx: Transaction | None, name: str, exact: bool,
              node_perms: tuple[Perm, ...] | None = None, old_perms: tuple[Perm, ...] | None = None) -> None:
        """fire_watches(): queue WATCH_EVENTs for ``name``; inside a transaction, remember them instead."""
        if tx is not None:
            # A non-exact event replaces an exact one, not the other way round (queue_watches).
            tx.watches[name] = tx.watches.get(name, True) and exact
            return
        for conn in self._connections:
            if not self._watch_permitted(conn.domid, name, node_perms, old_perms):
                continue
            for w in conn.watches:
                if (name == w.path) if exact else _is_child(name, w.path):
                    conn.queue_event(name[w.prefix_len:], w.token)

    def _watch_permitted(self, domid: int, name: str, node_perms: tuple[Perm, ...] | None,
                         old_perms: tuple[Perm, ...] | None) -> bool:
        """The watcher must be able to read the node (before or after the change) or its parent."""
        if old_perms is not None and _perm_for(domid, old_perms) & PERM_READ:
            return True
        if node_perms is None:
            node = self._nodes.get(name)
            if node is None:
                return False
            node_perms = node.perms
        if _perm_for(domid, node_perms) & PERM_READ:
            return True
        parent = self._nodes.get(parent_of(name))
        return parent is not None and bool(_perm_for(domid, parent.perms) & PERM_READ)

    def _fire_special(self, name: str) -> None:
        self._fire(None, name, exact=True, node_perms=self._nodes[name].perms)

    # --- transactions --------------------------------------------------------------------------------

    def transaction_start(self, conn: Connection) -> Transaction:
        """A new transaction on ``conn``: the next free id (never 0) and a copy of the table."""
        while True:
            tx_id = conn.next_tx_id
            conn.next_tx_id = (conn.next_tx_id + 1) & 0xFFFFFFFF
            if tx_id != 0 and tx_id not in conn.transactions:
                break
        tx = conn.transactions[tx_id] = Transaction(tx_id, dict(self._nodes))
        return tx

    def commit(self, tx: Transaction) -> None:
        """finalize_transaction(): EAGAIN if anything the transaction touched changed meanwhile."""
        for path, gen in tx.seen.items():
            cur = self._nodes.get(path)
            if (cur.generation if cur is not None else None) != gen:
                raise XenStoreError("EAGAIN", f"{path} changed during the transaction")
        for path in tx.modified:
            node = tx.nodes.get(path)
            if node is None:
                self._nodes.pop(path, None)
            else:
                self._nodes[path] = replace(node, generation=self._next_gen())
        for change in tx.changes:
            self._emit_change(change)
        for path, exact in tx.watches.items():
            self._fire(None, path, exact, node_perms=None, old_perms=tx.orig_perms.get(path))

    # --- trusted API (the hypervisor and the debugger act as dom0) -------------------------------------

    def read(self, path: str) -> bytes:
        """The value at ``path``; raises :class:`XenStoreError` (``ENOENT``, ``EINVAL``)."""
        name = self.canonicalize(0, path.encode(), False)
        return self.get_node(0, None, name, PERM_READ).value

    def exists(self, path: str) -> bool:
        try:
            self.read(path)
        except XenStoreError:
            return False
        return True

    def write(self, path: str, value: bytes | str) -> None:
        """Write as dom0 (creating parents); watches fire as for any writer."""
        data = value.encode() if isinstance(value, str) else bytes(value)
        self.op_write(0, None, self.canonicalize(0, path.encode(), False), data)

    def mkdir(self, path: str) -> None:
        self.op_mkdir(0, None, self.canonicalize(0, path.encode(), False))

    def rm(self, path: str) -> None:
        """Remove ``path`` and everything below it (``EINVAL`` for ``/``)."""
        self.op_rm(0, None, self.canonicalize(0, path.encode(), False))

    def ls(self, path: str) -> list[str]:
        name = self.canonicalize(0, path.encode(), False)
        return list(self.get_node(0, None, name, PERM_READ).children)

    def get_perms(self, path: str) -> list[str]:
        name = self.canonicalize(0, path.encode(), True)
        return [str(p) for p in self.get_node(0, None, name, PERM_READ).perms]

    def set_perms(self, path: str, perms: Iterable[str | Perm]) -> None:
        """Set a node's permissions, e.g. ``["n1", "r0"]``: owner first."""
        parsed = tuple(p if isinstance(p, Perm) else Perm.parse(p) for p in perms)
        if not parsed:
            raise XenStoreError("EINVAL", "no permissions")
        self.op_set_perms(0, None, self.canonicalize(0, path.encode(), True), parsed)

    def snapshot(self, path: str = "/") -> dict:
        """A plain nested dict of the subtree: ``{"value", "perms", "children": {name: ...}}``."""
        name = self.canonicalize(0, path.encode(), False)
        if name not in self._nodes:
            raise XenStoreError("ENOENT", name)

        def entry(node: Node) -> dict:
            return {"value": node.value, "perms": [str(p) for p in node.perms], "children": {}}

        top = entry(self._nodes[name])
        stack = [(name, top)]
        while stack:                        # no recursion: trees may be ~1000 levels deep
            parent, out = stack.pop()
            for c in self._nodes[parent].children:
                child = self._nodes.get(_join(parent, c))
                if child is not None:
                    out["children"][c] = sub = entry(child)
                    stack.append((_join(parent, c), sub))
        return top

    def introduce_domain(self, domid: int) -> None:
        """The toolstack's XS_INTRODUCE: the domain is connected; ``@introduceDomain`` fires."""
        self._introduced.add(domid)
        self._fire_special("@introduceDomain")

    def release_domain(self, domid: int) -> None:
        """XS_RELEASE / domain death: its connections lose their watches; ``@releaseDomain`` fires."""
        self._introduced.discard(domid)
        for conn in self._connections:
            if conn.domid == domid:
                conn.watches.clear()
        self._fire_special("@releaseDomain")

    def is_introduced(self, domid: int) -> bool:
        return domid in self._introduced

    def owned_count(self, domid: int) -> int:
        """How many nodes ``domid`` owns (what the 1000-node quota counts)."""
        return sum(1 for n in self._nodes.values() if n.owner == domid)

    def populate_domain(self, domid: int, name: str, memory_kib: int, vcpus: int, console_port: int,
                        console_mfn: int, store_port: int, store_mfn: int, *,
                        max_memory_kib: int | None = None, uuid: str | None = None,
                        kernel: str = "", cmdline: str = "", console_backend_domid: int = 0) -> str:
        """Write what ``xl create`` writes for a PV domU (libxl__domain_make, libxl__build_post and the
        console device), with libxl's ownership, then introduce the domain. Returns its home path."""
        home = f"/local/domain/{domid}"
        uuid = uuid or f"00000000-0000-0000-0000-{domid:012x}"      # deterministic, for replay
        vm = f"/vm/{uuid}"
        ro = (Perm(0, "n"), Perm(domid, "r"))          # libxl "roperm": dom0's, the guest may read
        rw = (Perm(domid, "n"),)                       # libxl "rwperm": the guest's own
        if not self.exists("/local/domain/0"):         # xen-init-dom0 writes these at boot
            self.write("/local/domain/0/name", "Domain-0")
            self.write("/local/domain/0/domid", "0")
        entries: list[tuple[str, str, tuple[Perm, ...] | None]] = [
            (home, "", ro), (vm, "", ro),
            (f"{vm}/uuid", uuid, None), (f"{vm}/name", name, None),
            (f"{vm}/image/ostype", "linux", None), (f"{vm}/image/kernel", kernel, None),
            (f"{vm}/image/cmdline", cmdline, None), (f"{vm}/start_time", "0.00", None),
            (f"{home}/vm", vm, None), (f"{home}/name", name, None),
            (f"{home}/cpu", "", ro), (f"{home}/memory", "", ro), (f"{home}/device", "", ro),
            (f"{home}/control", "", ro),
        ]
        for leaf in ("shutdown", "feature-poweroff", "feature-reboot", "feature-suspend", "sysrq"):
            entries.append((f"{home}/control/{leaf}", "", rw))
        entries.append((f"{home}/device/suspend/event-channel", "", rw))
        for leaf in ("data", "drivers", "feature", "attr", "error"):
            entries.append((f"{home}/{leaf}", "", rw))
        entries += [
            (f"{home}/control/platform-feature-multiprocessor-suspend", "1", None),
            (f"{home}/control/platform-feature-xs_reset_watches", "1", None),
            (f"{home}/memory/static-max", str(max_memory_kib or memory_kib), None),
            (f"{home}/memory/target", str(memory_kib), None),
            (f"{home}/memory/videoram", "-1", None),
            (f"{home}/domid", str(domid), None),
            (f"{home}/store/port", str(store_port), None),
            (f"{home}/store/ring-ref", str(store_mfn), None),
        ]
        entries += [(f"{home}/cpu/{i}/availability", "online", None) for i in range(vcpus)]
        # The primary console: frontend owned by the guest (readable by its backend), ring details
        # read-only to the guest; the backend directory belongs to the backend domain.
        back = f"/local/domain/{console_backend_domid}/backend/console/{domid}/0"
        front = (Perm(domid, "n"), Perm(console_backend_domid, "r"))
        ro_front = (Perm(0, "n"), Perm(domid, "r"))
        entries += [
            (f"{home}/console", "", front),
            (f"{home}/console/backend", back, front),
            (f"{home}/console/backend-id", str(console_backend_domid), front),
            (f"{home}/console/limit", "1048576", front),
            (f"{home}/console/type", "xenconsoled", front),
            (f"{home}/console/output", "pty", front),
            (f"{home}/console/tty", "", front),
            (f"{home}/console/port", str(console_port), ro_front),
            (f"{home}/console/ring-ref", str(console_mfn), ro_front),
            (back, "", (Perm(console_backend_domid, "n"), Perm(domid, "r"))),
            (f"{back}/frontend", f"{home}/console", None),
            (f"{back}/frontend-id", str(domid), None),
            (f"{back}/online", "1", None),
            (f"{back}/state", "1", None),
            (f"{back}/protocol", "vt100", None),
        ]
        for path, value, perms in entries:
            self.write(path, value)
            if perms is not None:
                self.set_perms(path, perms)
        self.introduce_domain(domid)
        return home

    def check(self) -> list[str]:
        """Consistency problems of the tree (empty when sound): every listed child exists, every node
        is listed by its parent exactly once, every node has an owner."""
        problems = []
        for path, node in self._nodes.items():
            if not node.perms:
                problems.append(f"{path}: no permissions")
            if len(set(node.children)) != len(node.children):
                problems.append(f"{path}: duplicate children")
            for c in node.children:
                if _join(path, c) not in self._nodes:
                    problems.append(f"{path}: child {c} missing")
            if path == "/" or path.startswith("@"):
                continue
            parent = self._nodes.get(parent_of(path))
            if parent is None or path.rsplit("/", 1)[1] not in parent.children:
                problems.append(f"{path}: not listed by its parent")
        return problems

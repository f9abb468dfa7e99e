"""LDAP transport: connections, the RFC 4533 sync stream, and guarded writes.

Two connections, each bound once: one carries the refreshAndPersist search,
the other every read and write, so a write never waits behind the stream and
no write needs a bind of its own. This module knows LDAP, not plugins and not
the provisioning protocol: it reports what the stream says as events and
performs the modifications it is given.
"""
from __future__ import annotations

import logging
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Iterable, Iterator, Mapping, Sequence

import ldap
import ldap.dn
from ldap.filter import escape_filter_chars
from ldap.controls.libldap import AssertionControl
from ldap.ldapobject import SimpleLDAPObject
from ldap.syncrepl import SyncreplConsumer

from provisioning.backend.ber import ANSWER_CLASSES, SYNC_CONTROL_CLASSES, PostRead, PostReadAnswer
from provisioning.backend.cookie import DEFAULT_CSN
from provisioning.backend.dn import below
from provisioning.base.entry import Entry
from provisioning.base.log import print_line
from provisioning.base.secret import Secret

log = logging.getLogger(__name__)

# Result code of e-syncRefreshRequired (RFC 4533 section 2.6): the cookie is
# too old for the provider's session log; python-ldap has no class for it.
SYNC_REFRESH_REQUIRED = 4096
# modifyTimestamp dates a claim that carries no owner (one made by the original daemon).
SYNC_ATTRS = ["*", "entryCSN", "entryUUID", "modifyTimestamp"]
# Candidates for a deletion the server only implied are checked this many at a time.
UUID_CHECK_BATCH = 200
# How many stream messages one poll takes before it hands them over.
POLL_BATCH = 256
# Wait for the messages after the first of a batch. Not 0: with a zero
# timeout python-ldap returns an empty result instead of raising TIMEOUT.
BATCH_WAIT = 0.0001

# Errors that mean "this server is not there (now)".
UNAVAILABLE = (ldap.SERVER_DOWN, ldap.CONNECT_ERROR, ldap.UNAVAILABLE, ldap.BUSY, ldap.TIMEOUT)
# Refusals that say "not now" rather than "never": a read-only or shadow
# database, an ACL being fixed, a server under load. A write refused this way
# is kept and tried again; giving up on it would lose a request.
_REFUSED_FOR_NOW = (ldap.UNWILLING_TO_PERFORM, ldap.INSUFFICIENT_ACCESS, ldap.ADMINLIMIT_EXCEEDED,
                    ldap.TIMELIMIT_EXCEEDED, ldap.OTHER, ldap.REFERRAL, ldap.LOOP_DETECT)


class DirectoryUnavailable(Exception):
    """No server answers (or the connection broke): reconnect and carry on."""


class WriteRefused(Exception):
    """The server is up but takes no writes for now (read-only, busy, ACL): try again later."""


class BindRefused(Exception):
    """The server refused ADMIN_USER/ADMIN_PASSWORD."""


class RefreshRequired(Exception):
    """The provider cannot resume from our cookie: start over without one."""


class SubtreeMissing(Exception):
    """SERVICE_SUBTREE does not exist on the server."""


class Conflict(Exception):
    """A guarded write found the entry changed, or gone (``gone``)."""

    def __init__(self, message: str, *, gone: bool = False) -> None:
        super().__init__(message)
        self.gone = gone


class DirectoryError(Exception):
    """The server refused an operation for a reason that retrying will not fix."""


@dataclass(frozen=True)
class Identity:
    """Which directory, and which subtree entry in it: entryUUIDs, the same on every replica."""

    suffix: str | None          # the naming context that holds SERVICE_SUBTREE (None: not readable)
    base: str | None            # SERVICE_SUBTREE's own entry (None: missing or not readable)


@dataclass
class LdapSettings:
    """How to reach and bind to the directory ([Database] of the service configuration)."""

    uris: list[str]
    bind_dn: str
    password: Secret = field(repr=False)
    timeout: float = 30.0
    ca_file: str = ""
    start_tls: bool = False
    # What the daemon reads of an entry (stream, read, search): every attribute
    # by default, or the allow-list of core and plugin (Service.attributes).
    attributes: tuple[str, ...] = tuple(SYNC_ATTRS)

    @classmethod
    def from_config(cls, config) -> "LdapSettings":
        db = config.database
        return cls(list(db.servers), db.bind_dn, db.password, db.timeout, db.ca_file, db.start_tls)


def describe(err: ldap.LDAPError) -> str:
    """A one-line reason from a python-ldap exception."""
    info = err.args[0] if err.args and isinstance(err.args[0], dict) else {}
    text = info.get("desc") or type(err).__name__
    if info.get("info"):
        text += f" ({info['info']})"
    return text


def connect(settings: LdapSettings, factory=SimpleLDAPObject) -> tuple[SimpleLDAPObject, str]:
    """Open and bind a connection to the first URI that answers."""
    failures = []
    for uri in settings.uris:
        conn = factory(uri)
        try:
            _configure(conn, settings, uri)
            if settings.start_tls and uri.lower().startswith("ldap://"):
                conn.start_tls_s()
            conn.simple_bind_s(settings.bind_dn, settings.password.reveal())
        except ldap.INVALID_CREDENTIALS as err:
            raise BindRefused(f"{uri} refused the bind as {settings.bind_dn}: {describe(err)}") from err
        except ldap.LDAPError as err:
            failures.append(f"{uri}: {describe(err)}{_tls_hint(err, settings, uri)}")
            unbind_quietly(conn)
            continue
        return conn, uri
    raise DirectoryUnavailable("no LDAP server answered: " + "; ".join(failures))


def _tls_hint(err: ldap.LDAPError, settings: LdapSettings, uri: str) -> str:
    """libldap reports a refused certificate as a bare connect error: say what it likely is."""
    tls = uri.lower().startswith("ldaps://") or (settings.start_tls and uri.lower().startswith("ldap://"))
    if not tls or not isinstance(err, (ldap.CONNECT_ERROR, ldap.SERVER_DOWN)):
        return ""
    trusted = f"CA_FILE {settings.ca_file}" if settings.ca_file else "the system's CA store (CA_FILE is not set)"
    return (f"; if the TLS handshake failed: the server certificate must be signed by a CA in {trusted} "
            f"and name the host of the URI")


def _configure(conn: SimpleLDAPObject, settings: LdapSettings, uri: str) -> None:
    conn.protocol_version = ldap.VERSION3
    conn.set_option(ldap.OPT_REFERRALS, 0)
    conn.set_option(ldap.OPT_NETWORK_TIMEOUT, settings.timeout)
    conn.set_option(ldap.OPT_TIMEOUT, settings.timeout)
    # A signal (SIGHUP's reload, SIGTERM) that interrupts a wait must not
    # break the connection: without this libldap turns EINTR into SERVER_DOWN.
    conn.set_option(ldap.OPT_RESTART, ldap.OPT_ON)
    if uri.lower().startswith("ldapi://"):
        return
    # A silent network partition must not leave the persist search waiting forever.
    conn.set_option(ldap.OPT_X_KEEPALIVE_IDLE, 60)
    conn.set_option(ldap.OPT_X_KEEPALIVE_INTERVAL, 10)
    conn.set_option(ldap.OPT_X_KEEPALIVE_PROBES, 3)
    # Certificates are verified, always; CA_FILE only says which CAs to trust.
    conn.set_option(ldap.OPT_X_TLS_REQUIRE_CERT, ldap.OPT_X_TLS_DEMAND)
    if settings.ca_file:
        conn.set_option(ldap.OPT_X_TLS_CACERTFILE, settings.ca_file)
    conn.set_option(ldap.OPT_X_TLS_NEWCTX, 0)  # must come after the other TLS options


def unbind_quietly(conn: SimpleLDAPObject | None) -> None:
    """Close a connection that may already be dead; there is nothing to report."""
    if conn is None:
        return
    try:
        conn.unbind_s()
    except ldap.LDAPError:
        pass


def _abandon_quietly(conn: SimpleLDAPObject, msgid: int) -> None:
    try:
        conn.abandon(msgid)
    except ldap.LDAPError:
        pass


@contextmanager
def _unavailable_on_network_errors(what: str) -> Iterator[None]:
    try:
        yield
    except UNAVAILABLE as err:
        raise DirectoryUnavailable(f"{what}: {describe(err)}") from err


# ------------------------------------------------------------------ writes

class Directory:
    """The read/write connections. With ``dry_run`` writes are shown, not made.

    Each thread (the main loop, every worker) gets a connection of its own,
    bound once: python-ldap holds a connection's lock while it waits for an
    answer, so workers sharing one would wait for each other's round trips.
    Workers connect on first use to the server the main loop chose, and only to it.
    """

    def __init__(self, settings: LdapSettings, *, dry_run: bool = False) -> None:
        self.settings = settings
        self.dry_run = dry_run
        self._conns: dict[int, SimpleLDAPObject] = {}
        self._lock = threading.Lock()
        self.uri: str | None = None

    def open(self) -> None:
        self.close()
        conn, self.uri = connect(self.settings)
        self._conns[threading.get_ident()] = conn

    def close(self) -> None:
        with self._lock:
            conns, self._conns = self._conns, {}
        for conn in conns.values():
            unbind_quietly(conn)

    @property
    def conn(self) -> SimpleLDAPObject:
        """This thread's connection; DirectoryUnavailable when the directory is not open."""
        conn = self._conns.get(threading.get_ident())
        if conn is not None:
            return conn
        if self.uri is None or not self._conns:
            raise DirectoryUnavailable("not connected")
        # The server the main loop is on, and no other: on another one, which may
        # lag behind, a worker's claim would fail as "changed meanwhile" and drop
        # the request. When it does not answer, the loop reconnects everything.
        with _unavailable_on_network_errors("connect"):
            conn, _ = connect(replace(self.settings, uris=[self.uri]))
        with self._lock:
            self._conns[threading.get_ident()] = conn
        return conn

    def modify(self, dn: str, changes: Mapping[str, Sequence[str] | None], *,
               add: Mapping[str, Sequence[str]] | None = None,
               delete: Mapping[str, Sequence[str]] | None = None,
               expect: str | None = None, read_back: Sequence[str] | None = None) -> Entry | None:
        """Change attributes of ``dn`` in one operation.

        ``changes`` maps names to new values (replace); None removes the
        attribute. ``add`` and ``delete`` add or remove single values and
        leave the attribute's other values alone. ``expect`` is an LDAP filter
        the entry must match at that moment (RFC 4528 assertion): otherwise
        Conflict, and nothing changes. ``read_back`` names attributes to return
        as they are after the change (RFC 4527 post-read), read in the same
        operation. Raises DirectoryUnavailable when the connection is gone,
        WriteRefused when the server takes no writes for now, DirectoryError
        when it refuses this change for good.
        """
        mods = [(ldap.MOD_REPLACE, name, None if values is None else [v.encode() for v in values])
                for name, values in changes.items()]
        mods += [(ldap.MOD_DELETE, name, [v.encode() for v in values]) for name, values in (delete or {}).items()]
        mods += [(ldap.MOD_ADD, name, [v.encode() for v in values]) for name, values in (add or {}).items()]
        if self.dry_run:
            shown = ", ".join(f"{n}={'(removed)' if v is None else '|'.join(v)}" for n, v in changes.items())
            print_line(f"DRY-RUN: would modify {dn}: {shown}")
            log.info("DRY-RUN: would modify %s: %s", dn, shown)
            return None
        controls = []
        if expect:
            controls.append(AssertionControl(True, expect))
        if read_back:
            controls.append(PostRead(read_back))
        with _unavailable_on_network_errors(f"modify {dn}"):
            try:
                msgid = self.conn.modify_ext(dn, mods, serverctrls=controls)
                _, _, _, answer = self.conn.result3(msgid, all=1, timeout=self.settings.timeout,
                                                    resp_ctrl_classes=ANSWER_CLASSES)
            except ldap.ASSERTION_FAILED as err:
                raise Conflict(f"{dn} changed meanwhile (no longer matches {expect})") from err
            except ldap.NO_SUCH_OBJECT as err:
                raise Conflict(f"{dn} no longer exists", gone=True) from err
            except _REFUSED_FOR_NOW as err:
                raise WriteRefused(f"modify {dn} refused for now: {describe(err)}") from err
            except ldap.LDAPError as err:
                if isinstance(err, UNAVAILABLE):
                    raise
                raise DirectoryError(f"modify {dn} refused: {describe(err)}") from err
        for control in answer or []:
            if isinstance(control, PostReadAnswer):
                # Not control.dn: python-ldap decodes it as Latin-1, which
                # garbles a DN that is not ASCII; the entry is the one we wrote.
                return Entry.from_ldap(dn, control.entry)
        return None

    def read(self, dn: str, attrs: Sequence[str] | None = None) -> Entry | None:
        """The entry ``dn`` as it is now, or None if it does not exist (``attrs``: settings.attributes)."""
        found = self.search(dn, "(objectClass=*)", attrs, scope=ldap.SCOPE_BASE)
        return found[0] if found else None

    def search(self, base: str, filterstr: str, attrs: Sequence[str] | None = None,
               scope: int = ldap.SCOPE_SUBTREE) -> list[Entry]:
        """Entries under ``base`` matching ``filterstr`` (an empty list if base is gone).

        ``attrs``: the attributes to read; None: settings.attributes.
        """
        wanted = list(self.settings.attributes if attrs is None else attrs)
        with _unavailable_on_network_errors(f"search {base}"):
            try:
                results = self.conn.search_ext_s(base, scope, filterstr, wanted)
            except ldap.NO_SUCH_OBJECT:
                return []
            except ldap.LDAPError as err:
                if isinstance(err, UNAVAILABLE):
                    raise
                raise DirectoryError(f"search {base} {filterstr} refused: {describe(err)}") from err
        return [Entry.from_ldap(dn, attrs) for dn, attrs in results if dn]

    def context_csns(self, base: str) -> list[str]:
        """The provider's contextCSN values for the database holding ``base`` ([] if not readable).

        contextCSN lives on the suffix entry: walk up from ``base`` until an
        entry has it. An ACL may hide it from a bind that is not the rootDN;
        then nothing can be compared and the caller says so.
        """
        parts = ldap.dn.str2dn(base)
        for start in range(len(parts)):
            dn = ldap.dn.dn2str(parts[start:])
            try:
                found = self.read(dn, ["contextCSN"])
            except DirectoryError:
                continue
            if found is not None and found.values("contextCSN"):
                return found.values("contextCSN")
        return []

    def existing_uuids(self, base: str, uuids: Iterable[str]) -> set[str]:
        """Which of ``uuids`` still name an entry below ``base``.

        Only a complete answer counts: a ``base`` that does not exist
        (SubtreeMissing), a referral, a size or time limit or any refusal
        (DirectoryError) raises instead of saying "none of them".
        """
        wanted = sorted(set(uuids))
        found: set[str] = set()
        for start in range(0, len(wanted), UUID_CHECK_BATCH):
            chunk = wanted[start:start + UUID_CHECK_BATCH]
            terms = "".join(f"(entryUUID={escape_filter_chars(u)})" for u in chunk)
            for entry in self._complete_search(base, f"(|{terms})", ["entryUUID"]):
                if entry.uuid:
                    found.add(entry.uuid.lower())
        return found

    def _complete_search(self, base: str, filterstr: str, attrs: Sequence[str]) -> list[Entry]:
        """search(), but a missing base, a referral or a partial answer raises."""
        with _unavailable_on_network_errors(f"search {base}"):
            try:
                results = self.conn.search_ext_s(base, ldap.SCOPE_SUBTREE, filterstr, list(attrs))
            except ldap.NO_SUCH_OBJECT as err:
                raise SubtreeMissing(f"{base} does not exist") from err
            except ldap.LDAPError as err:
                if isinstance(err, UNAVAILABLE):
                    raise
                raise DirectoryError(f"search {base} {filterstr} refused: {describe(err)}") from err
        if any(not dn for dn, _ in results):
            raise DirectoryError(f"search {base} answered with a referral (a continuation reference), "
                                 "not the entries themselves")
        return [Entry.from_ldap(dn, attrs) for dn, attrs in results]

    def each(self, base: str, filterstr: str, attrs: Sequence[str] | None = None) -> Iterator[Entry]:
        """Every entry below ``base`` matching ``filterstr``, one at a time (a whole subtree in little memory).

        Only a complete answer ends normally: a missing ``base`` (SubtreeMissing),
        a referral, a size or time limit or any refusal (DirectoryError) is
        raised, after the entries that came before it: a caller that counts
        what it saw must not take a cut answer for the whole.
        """
        wanted = list(self.settings.attributes if attrs is None else attrs)
        conn, msgid = self.conn, None
        with _unavailable_on_network_errors(f"search {base}"):
            try:
                msgid = conn.search_ext(base, ldap.SCOPE_SUBTREE, filterstr, wanted)
                while True:
                    kind, results, _, _ = conn.result3(msgid, all=0, timeout=self.settings.timeout)
                    if kind == ldap.RES_SEARCH_RESULT:
                        msgid = None
                        return
                    for dn, values in results or []:
                        if kind == ldap.RES_SEARCH_REFERENCE or not dn:
                            raise DirectoryError(f"search {base} answered with a referral (a continuation "
                                                 "reference), not the entries themselves")
                        yield Entry.from_ldap(dn, values)
            except ldap.NO_SUCH_OBJECT as err:
                msgid = None
                raise SubtreeMissing(f"{base} does not exist") from err
            except ldap.LDAPError as err:
                if isinstance(err, UNAVAILABLE):
                    raise
                raise DirectoryError(f"search {base} {filterstr} refused: {describe(err)}") from err
            finally:
                if msgid is not None:           # left before its end: the server need not send the rest
                    _abandon_quietly(conn, msgid)

    def identity(self, base: str) -> Identity:
        """The entryUUIDs of the naming context holding ``base`` and of ``base`` itself (None: unreadable)."""
        try:
            contexts = self._naming_contexts()
            suffix = max((c for c in contexts if below(base, c)), key=len, default=None)
            return Identity(self._uuid(suffix) if suffix else None, self._uuid(base))
        except DirectoryError as err:
            log.debug("cannot read the directory's identity: %s", err)
            return Identity(None, None)

    def _naming_contexts(self) -> list[str]:
        with _unavailable_on_network_errors("read the root DSE"):
            try:
                found = self.conn.search_ext_s("", ldap.SCOPE_BASE, "(objectClass=*)", ["namingContexts"])
            except ldap.LDAPError as err:
                if isinstance(err, UNAVAILABLE):
                    raise
                raise DirectoryError(f"read the root DSE: {describe(err)}") from err
        attrs = found[0][1] if found else {}
        return [v.decode("utf-8", "replace") for v in attrs.get("namingContexts", [])]

    def _uuid(self, dn: str) -> str | None:
        entry = self.read(dn, ["entryUUID"])
        return entry.uuid if entry is not None else None


# ------------------------------------------------------------ sync stream

class EntryChanged:
    """An entry was added or modified (or is sent during a refresh).

    Kept as the server sent it; ``entry`` is decoded on first use. Two of the
    three entries a request brings are the echoes of the daemon's own claim
    and outcome, recognised by their entryCSN alone (Router.stream_job):
    decoding their thirty-odd attributes was wasted.
    """

    __slots__ = ("dn", "uuid", "csn", "_raw", "_entry")

    def __init__(self, dn: str, raw: Mapping[str, Sequence[bytes]], uuid: str | None = None) -> None:
        self.dn = dn
        self._raw = raw
        self._entry: Entry | None = None
        self.uuid: str | None = None
        csns = raw.get("entryCSN")
        # Spelled otherwise (OpenLDAP never does): the decoded entry, which ignores case, has it.
        self.csn: str | None = csns[0].decode("utf-8", "replace") if csns else None
        if uuid is None:                   # not from the sync state control: from the entry
            uuid = self.entry.uuid
        self.uuid = uuid.lower() if uuid else None

    @classmethod
    def of(cls, entry: Entry) -> "EntryChanged":
        """The event for an entry already decoded (tests, tools)."""
        event = cls.__new__(cls)
        event.dn, event.uuid, event.csn, event._raw, event._entry = entry.dn, entry.uuid, entry.csn, None, entry
        return event

    @property
    def entry(self) -> Entry:
        if self._entry is None:
            self._entry = Entry.from_ldap(self.dn, self._raw, self.uuid)
            self._raw = None               # not kept twice while the event waits in its lane
            if self.csn is None:
                self.csn = self._entry.csn
        return self._entry

    def __repr__(self) -> str:
        return f"EntryChanged({self.dn!r}, csn={self.csn!r})"


@dataclass
class EntriesDeleted:
    """Entries left the subtree; the server names them by entryUUID only."""
    uuids: list[str]


@dataclass
class PresentEnd:
    """The server finished telling which entries are present.

    ``implicit``: entries the client knows that were neither sent nor named
    present have left the subtree (the present phase of RFC 4533); False when
    the server names deletions itself. ``seen`` holds every entryUUID sent or
    named present in this phase.
    """
    implicit: bool
    seen: frozenset[str]


@dataclass
class RefreshDone:
    """The refresh phase is over: from now on changes arrive as they happen."""


@dataclass
class CookieReached:
    """Every event before this one is covered by ``cookie``."""
    cookie: str


Event = EntryChanged | EntriesDeleted | PresentEnd | RefreshDone | CookieReached


class _Consumer(SyncreplConsumer, SimpleLDAPObject):
    """python-ldap's consumer, turned into a queue of events.

    python-ldap calls syncrepl_set_cookie right after each entry callback;
    queueing the cookie as an event behind the entry keeps the order, so the
    daemon acknowledges a cookie only after it handled what came before.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.events: list[Event] = []
        self.present: set[str] = set()

    def result4(self, *args, **kwargs):
        # python-ldap's syncrepl_poll decodes every entry's sync state with pyasn1: ours is quicker.
        kwargs.setdefault("resp_ctrl_classes", SYNC_CONTROL_CLASSES)
        return super().result4(*args, **kwargs)

    def syncrepl_entry(self, dn, attributes, uuid) -> None:
        self.events.append(EntryChanged(dn, attributes, uuid))

    def syncrepl_delete(self, uuids) -> None:
        self.events.append(EntriesDeleted([u.lower() for u in uuids]))

    def syncrepl_present(self, uuids, refreshDeletes=False) -> None:  # noqa: N803 - python-ldap's name
        if uuids is not None:
            self.present.update(u.lower() for u in uuids)
            return
        self.events.append(PresentEnd(implicit=not refreshDeletes, seen=frozenset(self.present)))
        self.present = set()

    def syncrepl_refreshdone(self) -> None:
        self.events.append(RefreshDone())

    def syncrepl_set_cookie(self, cookie) -> None:
        self.events.append(CookieReached(cookie))

    def syncrepl_get_cookie(self):
        return None


class SyncStream:
    """The refreshAndPersist search on SERVICE_SUBTREE."""

    def __init__(self, settings: LdapSettings, base: str, filter_template: str) -> None:
        self.settings = settings
        self.base = base
        self.filter_template = filter_template
        self._conn: _Consumer | None = None
        self._msgid: int | None = None

    def open(self, cookie: str | None, *, uri: str | None = None) -> None:
        """Connect and start the search from ``cookie`` (None or empty: from scratch).

        ``uri``: that server only (the one the cookie was just checked on),
        not the first of SERVER that answers.

        %entryCSN% in SEARCH_FILTER (the original's default filter has it)
        stands for the original's oldest CSN, so the filter matches every
        entry it would match without the term. Cut at the cookie's CSN, as the
        original did, the filter kept the persist phase from ever sending the
        removal of an entry last changed before the session began (syncprov
        tests a removed entry against the filter), and a present phase from
        naming the unchanged entries. What changed since the cookie is the
        provider's to decide: with a cookie it sends only that anyway.
        """
        self.close()
        settings = replace(self.settings, uris=[uri]) if uri else self.settings
        conn, uri = connect(settings, factory=_Consumer)
        filterstr = self.filter_template.replace("%entryCSN%", DEFAULT_CSN)
        try:
            with _unavailable_on_network_errors(f"sync search on {uri}"):
                self._msgid = conn.syncrepl_search(self.base, ldap.SCOPE_SUBTREE, mode="refreshAndPersist",
                                                   cookie=cookie or None, filterstr=filterstr,
                                                   attrlist=list(self.settings.attributes))
        except BaseException:
            unbind_quietly(conn)
            raise
        self._conn = conn
        log.debug("sync search on %s below %s with %s from cookie %s", uri, self.base, filterstr, cookie)

    def close(self) -> None:
        unbind_quietly(self._conn)
        self._conn = None

    def fileno(self) -> int | None:
        """The stream's socket, to wait on with select (None when closed)."""
        if self._conn is None:
            return None
        try:
            return self._conn.fileno()
        except (ldap.LDAPError, AttributeError):
            return None

    def poll(self, timeout: float) -> list[Event]:
        """The events that arrived within ``timeout`` seconds, in order."""
        if self._conn is None:
            raise DirectoryUnavailable("sync stream not open")
        for wait in [max(timeout, BATCH_WAIT)] + [BATCH_WAIT] * (POLL_BATCH - 1):
            if not self._poll_one(wait):
                break
        events, self._conn.events = self._conn.events, []
        return events

    def _poll_one(self, wait: float) -> bool:
        try:
            going = self._conn.syncrepl_poll(msgid=self._msgid, timeout=wait, all=0)
        except ldap.TIMEOUT:
            return False
        except ldap.NO_SUCH_OBJECT as err:
            raise SubtreeMissing(f"SERVICE_SUBTREE {self.base} does not exist") from err
        except UNAVAILABLE as err:
            raise DirectoryUnavailable(f"sync stream: {describe(err)}") from err
        except ldap.LDAPError as err:
            info = err.args[0] if err.args and isinstance(err.args[0], dict) else {}
            if info.get("result") == SYNC_REFRESH_REQUIRED:
                raise RefreshRequired(describe(err)) from err
            raise DirectoryUnavailable(f"sync stream ended: {describe(err)}") from err
        if not going:
            raise DirectoryUnavailable("the server ended the sync search")
        return True

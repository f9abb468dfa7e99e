"""A throwaway OpenLDAP slapd for the sandbox and the tests.

It is python-ldap's ``slapdtest.SlapdObject`` with what a provisioning daemon
needs on top: the stoney suffix, our schema subset, the ``syncprov`` overlay
(RFC 4533 provider) and the base tree of the backup service.
"""
from __future__ import annotations

import os
import tempfile
import time

import ldap
import ldap.modlist
from slapdtest import SlapdObject

from provisioning.config import resources

SUFFIX = "dc=stoney-cloud,dc=org"
BACKUP_BASE = f"ou=backup,ou=services,{SUFFIX}"
ACCOUNTS_BASE = f"ou=accounts,{BACKUP_BASE}"
# Our schema subset, as the package ships it.
SCHEMA_LDIF = resources.etc_path("Provisioning/schema/stoney-backup.ldif")

# slapdtest's own template plus: the syncprov module, indexes syncprov needs,
# a map of 4 GiB (the default 10 MiB fills at a few thousand accounts; the file
# is sparse), and the overlay on the one database (the %(syncprov...)s parts, left out for
# a slapd as Debian installs it). Debian keeps its modules in /usr/lib/ldap.
_CONF_TEMPLATE = r"""dn: cn=config
objectClass: olcGlobal
cn: config
olcServerID: %(serverid)s
olcLogLevel: %(loglevel)s
olcAllows: bind_v2
olcAuthzRegexp: {0}"gidnumber=%(root_gid)s\+uidnumber=%(root_uid)s,cn=peercred,cn=external,cn=auth" "%(rootdn)s"
olcTLSCACertificateFile: %(cafile)s
olcTLSCertificateFile: %(servercert)s
olcTLSCertificateKeyFile: %(serverkey)s
olcTLSVerifyClient: try

dn: cn=module,cn=config
objectClass: olcModuleList
cn: module
olcModulePath: %(modulepath)s
olcModuleLoad: back_%(database)s
%(syncprov_module)s
dn: olcDatabase={0}config,cn=config
objectClass: olcDatabaseConfig
olcDatabase: {0}config
olcRootDN: %(rootdn)s

dn: olcDatabase=%(database)s,cn=config
objectClass: olcDatabaseConfig
objectClass: olcMdbConfig
olcDatabase: %(database)s
olcSuffix: %(suffix)s
olcRootDN: %(rootdn)s
olcRootPW: %(rootpw)s
olcDbDirectory: %(directory)s
olcDbMaxSize: 4294967296
olcDbIndex: objectClass%(syncprov_index)s eq
%(replication)s%(syncprov_overlay)s"""

_SYNCPROV_OVERLAY = """
dn: olcOverlay=syncprov,olcDatabase={1}%(database)s,cn=config
objectClass: olcOverlayConfig
objectClass: olcSyncProvConfig
olcOverlay: syncprov
olcSpCheckpoint: 100 10
olcSpSessionlog: 10000
"""

MODULE_PATH = os.environ.get("SLAPD_MODULE_PATH", "/usr/lib/ldap")
# slapdtest loads the configuration through a unix socket in the run folder,
# <rundir>/python-ldap-test-<port>/ldapi; a socket path holds at most 107 bytes.
SOCKET_PATH_MAX = 107


def _short_tmp() -> str | None:
    """/tmp when it exists ($TMPDIR may itself be long); else the default."""
    return "/tmp" if os.path.isdir("/tmp") else None


class StoneySlapd(SlapdObject):
    """slapd on 127.0.0.1 (free port) with syncprov and the stoney backup tree."""

    suffix = SUFFIX
    root_cn = "Manager"
    root_pw = "sandbox-secret"
    slapd_loglevel = "0"
    slapd_conf_template = _CONF_TEMPLATE
    # False: a provider as Debian installs it, without the syncprov module,
    # overlay and indexes (docs/deployment.md adds them).
    syncprov = True
    openldap_schema_files = (
        "core.ldif",
        "cosine.ldif",
        "nis.ldif",
        "inetorgperson.ldif",
        str(SCHEMA_LDIF),
    )

    def __init__(self, rundir: str | None = None) -> None:
        # slapdtest puts its run folder under $TMP or the current directory;
        # we want it somewhere we choose, and never inside the checkout.
        rundir = os.path.abspath(rundir or tempfile.gettempdir())
        self._short_rundir: str | None = None
        if len(os.fsencode(os.path.join(rundir, "python-ldap-test-65535", "ldapi"))) > SOCKET_PATH_MAX:
            # slapd crashed at start (segfault) on a longer socket path: seen for
            # the provider pairs under pytest's default basetemp (bin/test).
            self._short_rundir = rundir = tempfile.mkdtemp(prefix="slapd-", dir=_short_tmp())
        self.TMPDIR = rundir
        os.makedirs(self.TMPDIR, exist_ok=True)
        super().__init__()

    # terminate() and resume() came with python-ldap 3.4.4; Debian 12's 3.4.3 has
    # restart() alone. The same two steps, for tests that keep slapd down a while.
    def terminate(self) -> None:
        """Stop slapd (SIGTERM), keeping its data and configuration for resume()."""
        self._proc.terminate()

    def resume(self) -> None:
        """Start slapd again after terminate() (and wait(): the port must be free)."""
        self._start_slapd()

    def stop(self) -> None:
        super().stop()
        if self._short_rundir is not None:
            try:
                os.rmdir(self._short_rundir)
            except OSError:
                pass                          # empty by now; anything left is kept, not deleted

    def gen_config(self) -> str:
        return self.slapd_conf_template % {
            "serverid": hex(self.server_id),
            "loglevel": self.slapd_loglevel,
            "database": self.database,
            "directory": self._db_directory,
            "suffix": self.suffix,
            "rootdn": self.root_dn,
            "rootpw": self.root_pw,
            "root_uid": os.getuid(),
            "root_gid": os.getgid(),
            "cafile": self.cafile,
            "servercert": self.servercert,
            "serverkey": self.serverkey,
            "modulepath": MODULE_PATH,
            "replication": self.replication(),
            "syncprov_module": "olcModuleLoad: syncprov\n" if self.syncprov else "",
            "syncprov_index": ",entryCSN,entryUUID" if self.syncprov else "",
            "syncprov_overlay": _SYNCPROV_OVERLAY % {"database": self.database} if self.syncprov else "",
        }

    def replication(self) -> str:
        """Extra attributes of the database entry (a provider pair adds syncrepl)."""
        return ""

    load_base = True
    # slapdtest picks a port by binding and closing a socket; another process (the
    # other pytest worker's slapd, an outgoing connection) may take it before slapd
    # binds, and slapd then exits at once. Seen on CI, where it failed a whole worker.
    start_attempts = 3

    def start(self) -> None:
        for attempt in range(1, self.start_attempts + 1):
            try:
                super().start()
                break
            except RuntimeError as err:
                if "exited before opening port" not in str(err) or attempt == self.start_attempts:
                    raise
                self._log.warning("slapd on port %d exited at start (attempt %d): trying another port",
                                  self._port, attempt)
                self._cleanup_rundir()
                self._choose_port()
        if self.load_base and not self._has_base():
            self.load_base_tree()

    def _choose_port(self) -> None:
        """A new free port, and the run folder and URIs named after it."""
        SlapdObject.__init__(self)

    @property
    def database_dn(self) -> str:
        return f"olcDatabase={{1}}{self.database},cn=config"

    def set_read_only(self, read_only: bool) -> None:
        """Make the database refuse writes (olcReadOnly), as a provider being maintained does."""
        conn = self.connect()
        try:
            conn.modify_s(self.database_dn, [(ldap.MOD_REPLACE, "olcReadOnly",
                                              [b"TRUE" if read_only else b"FALSE"])])
        finally:
            conn.unbind_s()

    def connect(self) -> ldap.ldapobject.LDAPObject:
        """A bound root connection (for tests and sandbox tools)."""
        conn = ldap.initialize(self.ldap_uri)
        conn.protocol_version = 3
        conn.simple_bind_s(self.root_dn, self.root_pw)
        return conn

    def _has_base(self) -> bool:
        conn = self.connect()
        try:
            conn.search_s(ACCOUNTS_BASE, ldap.SCOPE_BASE, attrlist=["1.1"])
            return True
        except ldap.NO_SUCH_OBJECT:
            return False
        finally:
            conn.unbind_s()

    def load_base_tree(self) -> None:
        """Create the stoney backup service tree (suffix down to ou=accounts)."""
        entries = [
            (SUFFIX, {"objectClass": [b"dcObject", b"organization"],
                      "dc": [b"stoney-cloud"], "o": [b"stoney cloud"]}),
            (f"ou=services,{SUFFIX}", _ou("services")),
            (BACKUP_BASE, _ou("backup")),
            (f"ou=configuration,{BACKUP_BASE}", _ou("configuration")),
            (ACCOUNTS_BASE, _ou("accounts")),
        ]
        conn = self.connect()
        try:
            for dn, attrs in entries:
                conn.add_s(dn, ldap.modlist.addModlist(attrs))
        finally:
            conn.unbind_s()


class ProviderPair:
    """Two slapd replicating each other (multi-provider, "mirror mode"), as stoney runs them.

    Each has its own server id; each pulls the other's changes with syncrepl
    and offers its own with syncprov. The base tree is loaded on the first
    and reaches the second by replication.
    """

    def __init__(self, rundir: str) -> None:
        self.first = _Provider(os.path.join(rundir, "one"))
        self.second = _Provider(os.path.join(rundir, "two"))
        self.first.peer, self.second.peer = self.second, self.first
        self.second.load_base = False

    def relay_first_to_second(self, uri: str) -> None:
        """Let the second pull the first's changes through ``uri`` (a relay a test can cut); before start()."""
        self.second.peer_uri = uri

    def relay_second_to_first(self, uri: str) -> None:
        """Let the first pull the second's changes through ``uri`` (a relay a test can cut); before start()."""
        self.first.peer_uri = uri

    @property
    def servers(self) -> list["StoneySlapd"]:
        return [self.first, self.second]

    def start(self) -> None:
        self.first.start()
        self.second.start()

    def stop(self) -> None:
        for server in self.servers:
            if server._proc is not None or os.path.exists(server.testrundir):
                server.stop()


class _Provider(StoneySlapd):
    peer: "StoneySlapd"
    peer_uri: str | None = None

    def _choose_port(self) -> None:
        # The peer may already have written this port into its syncrepl line:
        # try the same one again once whoever held it has let go.
        time.sleep(0.5)

    def replication(self) -> str:
        return (f"olcSyncrepl: {{0}}rid=001 provider={self.peer_uri or self.peer.ldap_uri} bindmethod=simple "
                f'binddn="{self.peer.root_dn}" credentials={self.peer.root_pw} searchbase="{SUFFIX}" '
                f'type=refreshAndPersist retry="1 +" timeout=3 network-timeout=3\n'
                f"olcMultiProvider: TRUE\n")


def _ou(name: str) -> dict[str, list[bytes]]:
    return {"objectClass": [b"organizationalUnit"], "ou": [name.encode()]}

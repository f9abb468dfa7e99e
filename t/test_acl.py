"""The deployment of the directory, done as docs/deployment.md writes it, and the daemon with a service account.

The provider starts as Debian installs slapd: the suffix entry alone, no
syncprov, no schema of ours, and (stricter than Debian) a database that lets
nobody but the rootDN read anything, and anonymous clients only authenticate;
a size limit of 3 entries. Then exactly the commands and LDIF blocks of
docs/deployment.md, "4. The directory" (our schema with ldapadd,
syncprov.ldif, subtree.ldif, account.ldif, acl.ldif) are applied, and the
daemon runs with the service account they create, not the rootDN: --check,
requests (claim with assertion and post-read, outcome, claim owner), a failed
request, retry, and status reading the suffix's contextCSN. The attack tests show that the account can do no
more than that.
"""
from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import ldap
import ldap.modlist
import pytest

from provisioning.sandbox.slapd import ACCOUNTS_BASE, BACKUP_BASE, SUFFIX, StoneySlapd

from helpers import DEADLINE, DaemonProcess, Directory, Host, account_attrs, assert_done

DEPLOYMENT = Path(__file__).resolve().parents[1] / "docs/deployment.md"
SERVICE_DN = f"cn=prov-backup-rsnapshot,ou=services,{SUFFIX}"
SECRET = "service-account-secret"
PASSWORD_PLACEHOLDER = "userPassword: {SSHA}the-output-of-slappasswd"
SCHEMA_COMMAND = "ldapadd -Y EXTERNAL -H ldapi:/// -f stoney-backup.ldif"

# What the provider had before the deployment's steps: anonymous clients may
# authenticate, nobody else may read or write anything (only the rootDN, which
# no ACL binds); a low size limit, so the deployment's olcLimits line must matter.
PRODUCTION_BEFORE = """dn: olcDatabase={1}mdb,cn=config
changetype: modify
add: olcAccess
olcAccess: {0}to attrs=userPassword by anonymous auth by * none
olcAccess: {1}to * by * none

dn: olcDatabase={-1}frontend,cn=config
changetype: modify
add: olcAccess
olcAccess: {0}to * by * none

dn: cn=config
changetype: modify
replace: olcSizeLimit
olcSizeLimit: 3
"""


class DebianProvider(StoneySlapd):
    """slapd as Debian installs it: the four standard schemas, no syncprov, the suffix entry and nothing below."""

    syncprov = False
    openldap_schema_files = ("core.ldif", "cosine.ldif", "nis.ldif", "inetorgperson.ldif")

    def load_base_tree(self) -> None:
        conn = self.connect()
        try:
            conn.add_s(SUFFIX, ldap.modlist.addModlist({"objectClass": [b"dcObject", b"organization"],
                                                        "dc": [b"stoney-cloud"], "o": [b"stoney cloud"]}))
        except ldap.ALREADY_EXISTS:
            pass                                      # a restart: the deployment's entries came since
        finally:
            conn.unbind_s()


def readme_block(name: str) -> tuple[list[str], str]:
    """The deployment's LDIF block saved as ``name``: the command in its first line, and its text."""
    text = DEPLOYMENT.read_text()
    section = text.split("## 4. The directory", 1)[1].split("\n## ", 1)[0]
    for block in re.findall(r"```ldif\n(.*?)```", section, re.S):
        first = block.splitlines()[0]
        if first.startswith(f"# {name}: "):
            return shlex.split(first.split(": ", 1)[1]), block
    raise AssertionError(f"docs/deployment.md has no LDIF block {name}")


def run_as_readme_says(server: StoneySlapd, argv: list[str], cwd: Path) -> None:
    """A deployment command against the test's slapd: its ldapi socket for ldapi:///, -w for -W's prompt."""
    argv = [server.ldapi_uri if a == "ldapi:///" else a for a in argv]
    argv = [a for arg in argv for a in (["-w", server.root_pw] if arg == "-W" else [arg])]
    result = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=DEADLINE)
    assert result.returncode == 0, f"{argv}: {result.stdout}{result.stderr}"


def _ldapmodify_as_root(server: StoneySlapd, ldif: str) -> None:
    result = subprocess.run(["ldapmodify", "-Y", "EXTERNAL", "-Q", "-H", server.ldapi_uri], input=ldif,
                            capture_output=True, text=True, timeout=DEADLINE)
    assert result.returncode == 0, result.stderr


@pytest.fixture(scope="module")
def provider(tmp_path_factory):
    work = tmp_path_factory.mktemp("provider")
    server = DebianProvider(rundir=str(work / "slapd"))
    server.start()
    try:
        _ldapmodify_as_root(server, PRODUCTION_BEFORE)
        server.before = _config_state(server)
        _deploy_as_the_readme_says(server, work)
        yield server
    finally:
        server.stop()


def _config_state(server: StoneySlapd) -> dict:
    """What cn=config says about syncprov, our schema and the database's indexes."""
    conn = server.connect()
    try:
        config = conn.search_s("cn=config", ldap.SCOPE_SUBTREE, "(|(olcOverlay=*)(cn=*stoney*)(olcDbIndex=*))",
                               ["olcOverlay", "olcDbIndex"])
    finally:
        conn.unbind_s()
    indexes = [v.decode() for _, attrs in config for v in attrs.get("olcDbIndex", [])]
    return {"syncprov": any(dn.startswith("olcOverlay={0}syncprov,") for dn, _ in config),
            "schema": any(re.match(r"cn=\{\d+\}stoney-backup,cn=schema,cn=config", dn) for dn, _ in config),
            "indexes": indexes}


def _deploy_as_the_readme_says(server: StoneySlapd, work: Path) -> None:
    assert SCHEMA_COMMAND in DEPLOYMENT.read_text()
    schema = subprocess.run([sys.executable, "-m", "provisioning", "files", "--print", "stoney-backup.ldif"],
                            capture_output=True, text=True, timeout=DEADLINE, check=True).stdout
    (work / "stoney-backup.ldif").write_text(schema)
    run_as_readme_says(server, shlex.split(SCHEMA_COMMAND), work)
    for name in ("syncprov.ldif", "subtree.ldif", "account.ldif", "acl.ldif"):
        command, text = readme_block(name)
        if name == "account.ldif":
            assert text.count(PASSWORD_PLACEHOLDER) == 1
            hashed = subprocess.run(["slappasswd", "-s", SECRET], capture_output=True, text=True,
                                    check=True, timeout=DEADLINE).stdout.strip()
            text = text.replace(PASSWORD_PLACEHOLDER, f"userPassword: {hashed}")
        (work / name).write_text(text)
        run_as_readme_says(server, command, work)


@pytest.fixture
def service_host(tmp_path, provider) -> Host:
    """A backup host whose daemon binds as the deployment's service account."""
    host = Host(tmp_path / "host", provider, ACCOUNTS_BASE)
    host.set("Database", ADMIN_USER=SERVICE_DN, ADMIN_PASSWORD=SECRET)
    return host


def _daemon_command(host: Host, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "provisioning", *args, "-c", str(host.config),
                           "-g", str(host.global_config)],
                          capture_output=True, text=True, timeout=DEADLINE)


def _service_bind(server: StoneySlapd) -> ldap.ldapobject.LDAPObject:
    conn = ldap.initialize(server.ldap_uri)
    conn.simple_bind_s(SERVICE_DN, SECRET)
    return conn


def test_the_readmes_steps_added_syncprov_its_indexes_and_our_schema(provider):
    assert provider.before == {"syncprov": False, "schema": False, "indexes": ["objectClass eq"]}
    assert _config_state(provider) == {"syncprov": True, "schema": True,
                                       "indexes": ["objectClass eq", "entryCSN eq", "entryUUID eq"]}


def test_the_daemon_does_its_work_with_the_service_account(service_host, provider):
    host = service_host
    check = _daemon_command(host, "-t")
    assert check.returncode == 0, check.stdout + check.stderr
    for line in (f"OK   LDAP bind: {provider.ldap_uri} accepts {SERVICE_DN}",
                 f"OK   LDAP sync control: {provider.ldap_uri} offers 1.3.6.1.4.1.4203.1.9.1.1",
                 f"OK   SERVICE_SUBTREE: {ACCOUNTS_BASE} exists"):
        assert any(out.startswith(line) for out in check.stdout.splitlines()), (line, check.stdout)

    portal = Directory(provider, ACCOUNTS_BASE, host.layout.backup_root)
    # More accounts than the provider's size limit (3): the sync refresh needs the deployment's olcLimits.
    dns = [portal.add(uid) for uid in ("3723701", "3723702", "3723703", "3723704")]
    daemon = DaemonProcess(host).start()
    try:
        for dn in dns:
            assert_done(portal.wait_mode(dn, "added"), "added")
        # A failure's return value, then retry with the same account, then the request done.
        host.fail_quota(1)
        portal.request(dns[0], "modify", sstQuota="2147483648")
        failed = portal.wait_return_value(dns[0], 6)
        assert failed["sstProvisioningMode"] == "modifying"
        host.fail_quota(0)
        retried = _daemon_command(host, "retry", dns[0])
        assert retried.returncode == 0 and f"{dns[0]}: retried" in retried.stdout, retried.stdout + retried.stderr
        assert_done(portal.wait_mode(dns[0], "modified"), "modified")

        status = _daemon_command(host, "status", "--json")
        report = json.loads(status.stdout)
        assert status.returncode == 0, status.stdout
        assert report["lag"]["context_csn"] and report["lag"]["seconds"] is not None, report["lag"]
        assert "ACL" not in (report["lag"]["note"] or "")
    finally:
        code = daemon.stop()
    assert code == 0, daemon.text()[-3000:]
    assert "INSUFFICIENT" not in daemon.text().upper()


def test_without_the_readmes_limits_line_a_refresh_would_fail(provider, tmp_path):
    """The olcLimits line is needed: the size limit of 3 stops a search of the subtree without it."""
    # More entries than the limit, whichever tests ran before on this provider (pytest-xdist may
    # run this one first, in a process of its own).
    portal = Directory(provider, ACCOUNTS_BASE, tmp_path)
    added = [portal.add(uid, sstProvisioningMode="added", sstProvisioningState="20260101T000000Z")
             for uid in ("3729911", "3729912", "3729913", "3729914")]
    try:
        _refresh_needs_the_limits_line(provider)
    finally:
        for dn in added:
            portal.conn.delete_s(dn)


def _refresh_needs_the_limits_line(provider) -> None:
    limits = [(ldap.MOD_DELETE, "olcLimits", None)]
    root = provider.connect()
    saved = root.search_s("olcDatabase={1}mdb,cn=config", ldap.SCOPE_BASE, attrlist=["olcLimits"])[0][1]["olcLimits"]
    assert saved, "the deployment's olcLimits line did not arrive"
    root.modify_s("olcDatabase={1}mdb,cn=config", limits)
    try:
        conn = _service_bind(provider)
        with pytest.raises(ldap.SIZELIMIT_EXCEEDED):
            conn.search_s(ACCOUNTS_BASE, ldap.SCOPE_SUBTREE, "(objectClass=*)", ["1.1"])
    finally:
        root.modify_s("olcDatabase={1}mdb,cn=config", [(ldap.MOD_ADD, "olcLimits", saved)])
    assert len(_service_bind(provider).search_s(ACCOUNTS_BASE, ldap.SCOPE_SUBTREE, "(objectClass=*)", ["1.1"])) > 3


# ------------------------------------------------------------------- attacks

@pytest.fixture
def account(provider, tmp_path) -> str:
    portal = Directory(provider, ACCOUNTS_BASE, tmp_path)
    dn = portal.add("3729901", sstProvisioningMode="added", sstProvisioningState="20260101T000000Z")
    yield dn
    portal.conn.delete_s(dn)


@pytest.mark.parametrize("attribute, value", [
    ("sstIsActive", b"FALSE"), ("homeDirectory", b"/etc/./x"), ("uidNumber", b"0"), ("sstQuota", b"1"),
    ("sstProvisioningExecutionDate", b"20991231"), ("userPassword", b"x"), ("objectClass", b"sstBackup"),
])
def test_the_service_account_cannot_change_anything_else(provider, account, attribute, value):
    before = provider.connect().search_s(account, ldap.SCOPE_BASE, attrlist=["*", "entryCSN"])
    with pytest.raises(ldap.INSUFFICIENT_ACCESS):
        _service_bind(provider).modify_s(account, [(ldap.MOD_REPLACE, attribute, [value])])
    assert provider.connect().search_s(account, ldap.SCOPE_BASE, attrlist=["*", "entryCSN"]) == before


def test_the_service_account_can_add_or_delete_no_entry(provider, account, tmp_path):
    conn = _service_bind(provider)
    with pytest.raises(ldap.INSUFFICIENT_ACCESS):
        conn.delete_s(account)
    with pytest.raises(ldap.INSUFFICIENT_ACCESS):
        conn.add_s(f"uid=3729902,{ACCOUNTS_BASE}", ldap.modlist.addModlist(account_attrs("3729902", tmp_path)))
    root = provider.connect()
    assert root.search_s(account, ldap.SCOPE_BASE, attrlist=["1.1"])
    with pytest.raises(ldap.NO_SUCH_OBJECT):
        root.search_s(f"uid=3729902,{ACCOUNTS_BASE}", ldap.SCOPE_BASE, attrlist=["1.1"])


def test_the_service_account_reads_and_writes_nothing_outside_the_subtree(provider, tmp_path):
    """Another service's entries (here an sstProvisioning entry next to ou=accounts) stay out of reach."""
    outside = f"ou=elsewhere,{BACKUP_BASE}"
    root = provider.connect()
    root.add_s(outside, [("objectClass", [b"organizationalUnit"]), ("ou", [b"elsewhere"])])
    portal = Directory(provider, outside, tmp_path)
    dn = portal.add("3729903")
    try:
        conn = _service_bind(provider)
        for base in (outside, dn, f"ou=configuration,{BACKUP_BASE}", BACKUP_BASE):
            try:
                found = conn.search_s(base, ldap.SCOPE_SUBTREE, "(objectClass=*)")
            except ldap.NO_SUCH_OBJECT:
                found = []
            assert found == [], base
        with pytest.raises((ldap.INSUFFICIENT_ACCESS, ldap.NO_SUCH_OBJECT)):
            conn.modify_s(dn, [(ldap.MOD_REPLACE, "sstProvisioningMode", [b"adding"])])
        assert portal.get(dn)["sstProvisioningMode"] == "add"
        # Of the suffix entry it reads contextCSN (and objectClass, for the filter), nothing else.
        suffix = conn.search_s(SUFFIX, ldap.SCOPE_BASE, "(objectClass=*)", ["*", "+"])
        assert set(suffix[0][1]) == {"objectClass", "contextCSN"}, suffix
    finally:
        root.delete_s(dn)
        root.delete_s(outside)


def test_anonymous_clients_gain_nothing_from_the_readmes_rules(provider, account):
    anonymous = ldap.initialize(provider.ldap_uri)
    for base in (ACCOUNTS_BASE, account, SUFFIX):
        try:
            found = anonymous.search_s(base, ldap.SCOPE_SUBTREE, "(objectClass=*)", ["*", "contextCSN"])
        except ldap.NO_SUCH_OBJECT:
            found = []
        assert found == [], base
    with pytest.raises((ldap.INSUFFICIENT_ACCESS, ldap.STRONG_AUTH_REQUIRED)):
        anonymous.modify_s(account, [(ldap.MOD_REPLACE, "sstProvisioningMode", [b"delete"])])

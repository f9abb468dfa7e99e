"""Secrets are never logged in the first place, and nothing else is masked.

The attack on the old search-and-replace redaction: with ADMIN_PASSWORD
"backup", every "backup" in the log (``ou=backup,...``) became ``********``
and so told the password. Here the password is "backup", the directory lives
below ``ou=backup``, and the real daemon runs against a slapd that accepts
that password: the DNs must show unchanged, and the password nowhere.
"""
from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys

import ldap
import pytest

from provisioning.config import loader as cfgmod
from provisioning.backend.ldap import LdapSettings
from provisioning.sandbox.slapd import BACKUP_BASE, StoneySlapd
from provisioning.base.secret import MASK, Secret
from provisioning.transport import DryRun, LocalCLI

from helpers import DaemonProcess, Directory, Host, assert_done

UID = "3723707"
PASSWORD = "backup"


# ------------------------------------------------------------------- Secret

def test_a_secret_shows_as_the_mask_whichever_way_it_is_turned_into_text():
    secret = Secret("hunter2")
    shown = [str(secret), repr(secret), f"{secret}", f"{secret!r}", f"{secret:>12}", "%s" % secret,
             "%r" % (secret,), "{}".format(secret), str([secret]), str({"ADMIN_PASSWORD": secret}),
             str((secret,))]
    assert all("hunter2" not in text and MASK in text for text in shown), shown
    assert secret.reveal() == "hunter2"


def test_a_secret_cannot_be_glued_into_a_string_or_serialised_by_accident():
    secret = Secret("hunter2")
    with pytest.raises(TypeError):
        "password: " + secret                                   # noqa: B018 - the point is that it raises
    with pytest.raises(TypeError):
        "".join([secret])                                       # type: ignore[list-item]
    with pytest.raises(TypeError):
        json.dumps({"password": secret})
    with pytest.raises(TypeError):
        hash(secret)


def test_secret_truth_and_equality():
    assert Secret("x") and not Secret("")
    assert Secret("x") == Secret("x") and Secret("x") != Secret("y")
    assert Secret("x") != "x"                                   # never compared with plain text
    assert Secret(Secret("x")).reveal() == "x"


def test_a_secret_in_an_argv_never_reaches_the_command(capsys):
    result = LocalCLI(timeout=10).run(["echo", Secret("hunter2")])
    assert result.stdout == f"{MASK}\n"
    with pytest.raises(TypeError):                              # not a str: loud, and nothing shown
        DryRun(LocalCLI(timeout=10)).run(["echo", Secret("hunter2")])
    assert "hunter2" not in capsys.readouterr().out


# ------------------------------------------------------------ configuration

def _service_conf(tmp_path, password: str) -> object:
    path = tmp_path / "Service.conf"
    path.write_text(f"""[Database]
BACKEND = LDAP
SERVER = ldap://ldap.example.org
ADMIN_USER = cn=Manager,ou=backup,dc=x
ADMIN_PASSWORD = {password}
SERVICE_SUBTREE = ou=accounts,ou=backup,dc=x
COOKIE_FILE = /var/lib/provisioning/backup.cookie

[Service]
MODUS = selfcare
TRANSPORTAPI = LocalCLI
SERVICE = Backup
TYPE = Rsnapshot
""")
    glob = tmp_path / "Global.conf"
    glob.write_text(f"[Mail]\nPASSWORD = mail-{password}\n")
    return cfgmod.load(path, glob)


def test_passwords_are_secrets_and_no_configuration_dump_shows_them(tmp_path):
    conf = _service_conf(tmp_path, "hunter2")
    db, mail = conf.service["Database"], conf.global_["Mail"]
    assert isinstance(db["ADMIN_PASSWORD"], Secret) and db["ADMIN_PASSWORD"].reveal() == "hunter2"
    assert isinstance(mail["PASSWORD"], Secret) and mail["PASSWORD"].reveal() == "mail-hunter2"
    dumps = [str(conf.service), repr(conf.service), str(conf.global_), str(conf.section("Database")),
             "\n".join(conf.service.write()), "\n".join(conf.global_.write()), str(conf.service.dict()),
             repr(LdapSettings.from_config(conf)), str(conf)]
    for dump in dumps:
        assert "hunter2" not in dump, dump
    assert "ou=accounts,ou=backup,dc=x" in str(conf.service)    # nothing else is masked
    assert isinstance(cfgmod.load(tmp_path / "Service.conf", None).global_["Mail"]["PASSWORD"], Secret)


def test_the_bind_gets_the_real_password(tmp_path):
    assert LdapSettings.from_config(_service_conf(tmp_path, "p@ss w0rd!")).password.reveal() == "p@ss w0rd!"


# ----------------------------------------------------- through the daemon

class _BackupPasswordSlapd(StoneySlapd):
    root_pw = PASSWORD


@pytest.fixture(scope="module")
def backup_slapd(tmp_path_factory):
    """A slapd whose root password is "backup": the word its service tree is named after."""
    server = _BackupPasswordSlapd(rundir=str(tmp_path_factory.mktemp("slapd-backup-pw")))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def backup_host(tmp_path, backup_slapd, request):
    name = "t" + hashlib.sha1(request.node.nodeid.encode()).hexdigest()[:12]
    subtree = f"ou={name},{BACKUP_BASE}"
    conn = backup_slapd.connect()
    conn.add_s(subtree, [("objectClass", [b"organizationalUnit"]), ("ou", [name.encode()])])
    conn.unbind_s()
    host = Host(tmp_path / "host", backup_slapd, subtree)
    assert host.service["Database"]["ADMIN_PASSWORD"] == PASSWORD
    return host


# Where "backup" legitimately shows: the service tree's DN, the backup root's
# path, the chroot script's and the plugin's names (its package, its checkout
# folder). Anything left is the password.
PLACES = re.compile(r"ou=backup,ou=services,dc=stoney-cloud,dc=org|/var/backup\b|prov-backup-|_backup_rsnapshot|"
                    r"/plugins/backup_rsnapshot\b")


def assert_password_absent(text: str) -> None:
    assert MASK not in text, "something was masked: " + text[text.index(MASK) - 200:][:400]
    left = PLACES.sub("", text)
    assert PASSWORD not in left, left[max(0, left.index(PASSWORD) - 200):][:400]


def test_a_short_password_never_shows_and_the_dns_stay_whole(backup_host):
    directory = Directory(backup_host.slapd, backup_host.subtree, backup_host.layout.backup_root)
    daemon = DaemonProcess(backup_host).start()                 # with -d, as DaemonProcess always runs it
    try:
        dn = directory.add(UID)
        assert_done(directory.wait_mode(dn, "added"), "added")
        daemon.wait_for(rf"{re.escape(dn)}: add done")
    finally:
        assert daemon.stop() == 0
    text = daemon.text()
    assert f"{dn}: add request claimed" in text and ",ou=backup,ou=services," in dn
    assert_password_absent(text)
    calls = backup_host.quota_calls() + backup_host.chroot_calls()
    assert calls and all(PASSWORD not in PLACES.sub("", arg) for call in calls for arg in call)
    assert PASSWORD not in " ".join(daemon.command())


def test_dry_run_shows_the_dns_but_not_the_password(backup_host):
    directory = Directory(backup_host.slapd, backup_host.subtree, backup_host.layout.backup_root)
    dn = directory.add(UID)
    daemon = DaemonProcess(backup_host, "--dry-run").start()
    try:
        daemon.wait_for(rf"DRY-RUN: would modify {re.escape(dn)}: sstProvisioningMode=added")
    finally:
        assert daemon.stop() == 0
    assert_password_absent(daemon.text())


def test_check_shows_the_dns_but_not_the_password(backup_host):
    result = subprocess.run([sys.executable, "-m", "provisioning", "-c", str(backup_host.config),
                             "-g", str(backup_host.global_config), "-t", "-d"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{backup_host.subtree} exists" in result.stdout
    assert_password_absent(result.stdout + result.stderr)


def test_a_refused_bind_names_the_dn_but_not_the_password(host):
    # The session's slapd does not know this user or password: the bind is refused.
    bind_dn = f"uid=provisioning,{BACKUP_BASE}"
    host.set("Database", ADMIN_USER=bind_dn, ADMIN_PASSWORD=PASSWORD)
    daemon = DaemonProcess(host).start(wait_ready=False)
    assert daemon.wait_exit() == 3
    text = daemon.text()
    assert f"refused the bind as {bind_dn}: Invalid credentials" in text
    assert_password_absent(text)


def test_the_bind_really_uses_the_password(backup_slapd):
    # The slapd above does refuse a wrong password: the tests above bound with "backup".
    conn = ldap.initialize(backup_slapd.ldap_uri)
    with pytest.raises(ldap.INVALID_CREDENTIALS):
        conn.simple_bind_s(backup_slapd.root_dn, "not-" + PASSWORD)

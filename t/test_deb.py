"""The Debian package, as a Debian 12 backup server gets it.

Built from this checkout with Debian's tools (t/debian_build.py), checked by
lintian, installed with apt, then: what it installed and where, nothing
enabled or started, its commands on Debian's python3 and python3-* packages,
the installed unit verified by systemd-analyze, the wiki's whole cycle with
/usr/bin's commands against the test slapd, and a purge that leaves nothing
but the operator's configuration and state.

It changes this machine's packages, so it runs only where asked for:
PROVISIONING_TEST_DEB=1 (bin/test sets it), as root, in one process, and
only when provisioning is not installed already (it purges what it installs).
PROVISIONING_TEST_DEB_FILE names a .deb to test instead of building one
(t/test_container_debian13.py: Debian 12's package on Debian 13).
"""
from __future__ import annotations

import os
import re
import signal
import stat
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

import debian_build
from debian_build import CLEAN_ENV, REPO
from helpers import DEADLINE
from test_installed import COMMANDS, UID, Installation, _walk_through, _wiki_configuration

pytestmark = pytest.mark.skipif(os.environ.get("PROVISIONING_TEST_DEB") != "1",
                                reason="builds, installs and purges the Debian package on this machine: bin/test "
                                       "runs it (PROVISIONING_TEST_DEB=1)")

SITE = Path("/usr/lib/python3/dist-packages")
UNIT = Path("/usr/lib/systemd/system/provisioning@.service")
# What an operator makes once the package is in (docs/deployment.md), and what rsyslog writes.
OPERATOR_CONFIG = Path("/etc/Provisioning/Backup/Rsnapshot.conf")
OPERATOR_STATE = Path("/var/lib/provisioning/Backup-Rsnapshot.cookie")
SYSLOG_FILE = Path("/var/log/provisioning/Backup-Rsnapshot.log")
OURS = (Path("/etc/Provisioning"), Path("/var/lib/provisioning"), Path("/var/log/provisioning"))


class Debian(Installation):
    """The package's commands in /usr/bin on /usr/bin/python3, run as an operator's shell runs them."""

    @property
    def python(self) -> Path:
        return Path("/usr/bin/python3")

    def bin(self, name: str) -> Path:
        return Path("/usr/bin") / name

    def env(self) -> dict[str, str]:
        return dict(CLEAN_ENV)


@dataclass
class Package:
    deb: Path
    existed: dict[str, bool]        # each path in the .deb: whether it was there before the install
    listed: list[str]               # dpkg -L, while installed


def _run(*argv: str | Path, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in argv], env=CLEAN_ENV, capture_output=True, text=True, timeout=timeout,
                          cwd="/")


def _installed_version() -> str:
    result = _run("dpkg-query", "-W", "-f", "${db:Status-Status} ${Version}", "provisioning")
    return result.stdout if result.returncode == 0 and result.stdout.startswith("installed") else ""


def _apt(*args: str) -> None:
    result = _run("apt-get", "-y", "-q", *args, timeout=600)
    assert result.returncode == 0, f"apt-get {' '.join(args)}:\n{result.stdout[-3000:]}\n{result.stderr}"


@pytest.fixture(scope="module")
def deb(tmp_path_factory) -> Path:
    if os.environ.get("PYTEST_XDIST_WORKER"):
        pytest.fail("t/test_deb.py installs and purges a package: run it in one process (without -n), as bin/test does")
    # A package built elsewhere: the one bin/test builds on Debian 12, tested on Debian 13 as it is.
    built = os.environ.get("PROVISIONING_TEST_DEB_FILE")
    return Path(built) if built else debian_build.build(tmp_path_factory.mktemp("deb"))


@pytest.fixture(scope="module")
def package(deb):
    assert not _installed_version(), "provisioning is installed on this machine already; this test purges what " \
                                     "it installs: apt-get purge provisioning first"
    taken = [str(path) for path in OURS if path.exists()]
    assert not taken, f"{', '.join(taken)} exist already: not this test's to use or remove"
    existed = {path: os.path.lexists(path) for path in _deb_paths(deb)}
    _apt("install", str(deb))
    try:
        listed = _run("dpkg", "-L", "provisioning").stdout.splitlines()
        yield Package(deb, existed, listed)
    finally:
        if _installed_version():
            _apt("purge", "provisioning")
        _forget_operator_files()


def _deb_paths(deb: Path) -> list[str]:
    listing = _run("dpkg-deb", "-c", deb).stdout.splitlines()
    paths = [line.split(None, 5)[5].split(" -> ")[0].removeprefix(".").rstrip("/") for line in listing]
    return [path for path in paths if path]


def _forget_operator_files() -> None:
    """What the purge test made as an operator would: gone again, with the folders left for it."""
    for path in (OPERATOR_CONFIG, OPERATOR_STATE, SYSLOG_FILE):
        if path.is_file() and not path.is_symlink():
            path.unlink()
    for folder in (OPERATOR_CONFIG.parent, *OURS):
        for sub in sorted(folder.glob("**/"), key=lambda p: -len(p.parts)) if folder.is_dir() else []:
            if sub.is_dir() and not any(sub.iterdir()):
                sub.rmdir()


# ------------------------------------------------------------------ the package itself

def test_lintian_finds_nothing_but_the_explained_overrides(deb):
    result = _run("lintian", "--allow-root", "--pedantic", "--show-overrides", deb)
    lines = [line for line in result.stdout.splitlines() if not line.startswith("N:")]
    assert not [line for line in lines if not line.startswith("O: ")], result.stdout + result.stderr
    overrides = (REPO / "debian/provisioning.lintian-overrides").read_text().splitlines()
    for number, line in enumerate(overrides):
        if line and not line.startswith("#"):
            assert number and overrides[number - 1].startswith("# "), f"override without its reason: {line}"


def test_it_installs_commands_unit_man_pages_and_the_operators_files(package):
    for name in COMMANDS:
        program = Path("/usr/bin") / name
        assert program.read_text().startswith("#!/usr/bin/python3\n"), name
    repo_unit = (REPO / "etc/systemd/provisioning@.service").read_text()
    assert UNIT.read_text() == repo_unit.replace("/usr/local/bin/", "/usr/bin/")
    assert "/usr/local" not in UNIT.read_text()
    for name, section in (("provisioning-daemon", 8), ("provisioning.conf", 5), ("prov-backup-create-chroot", 8),
                          ("prov-backup-create-home", 8), ("createBackupAccountLDIF", 1), ("loadOpenLDAPsingleLDIF", 1)):
        found = _run("man", "-w", str(section), name)
        assert found.returncode == 0 and found.stdout.startswith(f"/usr/share/man/man{section}/"), (name, found)
    conffiles = _run("dpkg-query", "-W", "-f", "${Conffiles}", "provisioning").stdout.split()
    assert [c for c in conffiles if c.startswith("/")] == ["/etc/logrotate.d/provisioning",
                                                          "/etc/rsyslog.d/60-provisioning.conf"]
    assert Path("/usr/share/bash-completion/completions/provisioning-daemon").read_bytes() == \
        (REPO / "etc/bash-completion/provisioning-daemon").read_bytes()
    state = Path("/var/lib/provisioning").stat()
    assert (state.st_uid, stat.S_IMODE(state.st_mode)) == (0, 0o700)
    assert Path("/etc/Provisioning/Backup").is_dir() and not any(Path("/etc/Provisioning").rglob("*.conf"))
    examples = Path("/usr/share/doc/provisioning/examples")
    assert "CREATE_CHROOT_CMD = /usr/bin/prov-backup-create-chroot" in \
        (examples / "Rsnapshot.conf.template").read_text()
    assert (examples / "provisioning-dashboard.json").is_file() and (examples / "provisioning-alerts.yml").is_file()


def test_nothing_is_enabled_or_started(package):
    wanted = [str(p) for p in Path("/etc/systemd/system").rglob("provisioning@*")]
    assert wanted == [], wanted
    postinst = Path("/var/lib/dpkg/info/provisioning.postinst")
    assert not postinst.exists() or not re.search(r"deb-systemd-(invoke|helper)|systemctl", postinst.read_text())
    # Only a removal stops the instances (t/test_container_systemd.py proves it under systemd).
    prerm = Path("/var/lib/dpkg/info/provisioning.prerm").read_text()
    assert re.search(r'if \[ "\$1" = "remove" \] .*\n +deb-systemd-invoke stop', prerm), prerm


def test_the_commands_run_on_debians_python_and_packages(package):
    probe = _run("/usr/bin/python3", "-c", "import json, provisioning, ldap, pluggy, configobj, daemon, "
                 "prometheus_client; print(json.dumps([m.__file__ for m in (provisioning, ldap, pluggy, configobj, "
                 "daemon, prometheus_client)]))")
    assert probe.returncode == 0, probe.stderr
    for path in re.findall(r'"([^"]+)"', probe.stdout):
        assert path.startswith(("/usr/lib/python3/dist-packages/", "/usr/lib/python3.")), path
    listed = _run("/usr/bin/provisioning-daemon", "--list-plugins")
    for name in ("Backup/Rsnapshot", "Generic/Exec"):
        assert re.search(rf"^{re.escape(name)} .* distribution provisioning 0\.1\.0$", listed.stdout, re.M), listed.stdout
    printed = _run("/usr/bin/provisioning-daemon", "files", "--print", "Rsnapshot.conf.template")
    assert "CREATE_CHROOT_CMD = /usr/bin/prov-backup-create-chroot" in printed.stdout
    assert str(SITE / "provisioning/etc") in _run("/usr/bin/provisioning-daemon", "files").stdout


def test_systemd_analyze_verifies_the_installed_unit(package):
    result = _run("systemd-analyze", "verify", "--man=no", "provisioning@Backup-Rsnapshot.service", timeout=60)
    assert result.returncode == 0 and result.stdout == "" and result.stderr == "", result.stderr


def test_the_wikis_cycle_with_the_installed_daemon(package, slapd, subtree, tmp_path):
    debian = Debian(Path("/usr"), tmp_path / "operator")
    debian.cwd.mkdir()
    root = tmp_path / "host"
    config = _wiki_configuration(debian, slapd, subtree, root)
    template = SITE / "provisioning/etc/Provisioning/Backup/rsnapshot.account.template"
    check = debian.run("provisioning-daemon", "-c", config, "-t")
    assert check.returncode == 0, check.stdout + check.stderr
    assert f"RSNAPSHOT_TEMPLATE: {template} passes rsnapshot configtest" in check.stdout

    data = root / "data"
    made = debian.run("createBackupAccountLDIF", "--uid", UID, "--output", data, "--base", subtree,
                      "--backup-root", root / "var/backup")
    assert made.returncode == 0, made.stderr
    log = root / "daemon.log"
    with open(log, "w") as out:
        daemon = subprocess.Popen([str(debian.bin("provisioning-daemon")), "-c", str(config)], stdout=out,
                                  stderr=subprocess.STDOUT, cwd=debian.cwd, env=debian.env(), start_new_session=True)
    try:
        _walk_through(debian, slapd, subtree, root, config, data, template, daemon, log)
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(DEADLINE) == 0, log.read_text()[-3000:]
    finally:
        if daemon.poll() is None:
            os.killpg(daemon.pid, signal.SIGKILL)
            daemon.wait(DEADLINE)
    assert "Traceback" not in log.read_text()


# --------------------------------------------------------------------- last: the purge

def test_purge_leaves_only_the_operators_configuration_and_state(package):
    copied = _run("/usr/bin/provisioning-daemon", "files", "--copy", "Rsnapshot.conf.template", OPERATOR_CONFIG)
    assert copied.returncode == 0, copied.stderr
    OPERATOR_STATE.write_text("rid=001,csn=\n")
    SYSLOG_FILE.parent.mkdir(mode=0o750)
    SYSLOG_FILE.write_text("what rsyslog wrote\n")
    _apt("purge", "provisioning")
    assert not _installed_version()
    kept = {OPERATOR_CONFIG, OPERATOR_STATE}
    holding = {str(parent) for path in kept for parent in path.parents}
    left = [path for path, existed in package.existed.items()
            if not existed and os.path.lexists(path) and path not in holding]
    assert left == [], f"left after the purge: {left}"
    assert OPERATOR_CONFIG.is_file() and OPERATOR_STATE.is_file()
    assert not SYSLOG_FILE.parent.exists()                       # logs go with the package
    assert not list(SITE.glob("provisioning*")), list(SITE.glob("provisioning*"))
    assert [path for path, existed in package.existed.items() if existed and not os.path.lexists(path)] == []

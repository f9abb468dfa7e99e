"""The installed package is the product.

A wheel is built from (a copy of) this checkout and installed into a fresh
virtualenv outside it, without system site-packages; then the installed
commands, run with the working directory outside the checkout and no
PYTHONPATH, go through the wiki's whole walk-through against the test slapd,
with the wiki's own configuration: only [Database] and paths changed, no
RSNAPSHOT_TEMPLATE key, no -g. Nothing of the checkout is imported by them.

The dependencies come as wheels pinned to the versions of the test's own
virtualenv (python-ldap from pip's wheel cache, as bin/setup built it), so
the installation does not build python-ldap again.
"""
from __future__ import annotations

import configparser
import json
import os
import re
import signal
import stat
import subprocess
import sys
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import ldap
import pytest
from packaging.requirements import Requirement

from provisioning.sandbox.layout import write_recorder

from debian_build import copy_source
from helpers import DEADLINE, assert_done, wait_until

REPO = Path(__file__).resolve().parents[1]
# The pip route pins the dependencies to this interpreter's versions and fetches them as wheels: from a
# virtualenv (bin/setup's). Debian's python3 has Debian's builds ("1.0.0+repack"), which no index has;
# that route is the Debian package's, proved by t/test_deb.py.
pytestmark = pytest.mark.skipif(sys.prefix == sys.base_prefix,
                                reason="the pip route is tested from a virtualenv (bin/test's first run); "
                                       "Debian's python3 is covered by t/test_deb.py")
WIKI_CONF = Path(__file__).with_name("data") / "wiki-Rsnapshot.conf"
UID = "3724300"
COMMANDS = ("provisioning-daemon", "prov-backup-create-chroot", "prov-backup-create-home",
            "createBackupAccountLDIF", "loadOpenLDAPsingleLDIF")


@dataclass(frozen=True)
class Installation:
    venv: Path
    cwd: Path          # where every command runs: outside the checkout

    @property
    def python(self) -> Path:
        return self.venv / "bin/python"

    def bin(self, name: str) -> Path:
        return self.venv / "bin" / name

    def env(self) -> dict[str, str]:
        """The environment of an operator's shell: no PYTHONPATH, no other virtualenv on PATH."""
        env = {k: v for k, v in os.environ.items()
               if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "PYTHONUSERBASE", "VIRTUAL_ENV")}
        env["PATH"] = f"{self.venv / 'bin'}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
        return env

    def run(self, name: str, *args: str | Path, timeout: float = DEADLINE) -> subprocess.CompletedProcess:
        return subprocess.run([str(self.bin(name)), *map(str, args)], cwd=self.cwd, env=self.env(),
                              capture_output=True, text=True, timeout=timeout)


def _pip(*args: str | Path) -> None:
    result = subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check", *map(str, args)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"pip {' '.join(map(str, args))}:\n{result.stdout}\n{result.stderr}"


def pinned_requirements(name: str) -> list[str]:
    """``dist==version`` for every run-time dependency of ``name``, as installed in this virtualenv."""
    pinned: dict[str, str] = {}
    todo = [name]
    while todo:
        for text in metadata.requires(todo.pop()) or []:
            requirement = Requirement(text)
            if requirement.marker and not requirement.marker.evaluate({"extra": ""}):
                continue        # an extra (test) or another platform's
            key = requirement.name.lower()
            if key not in pinned:
                pinned[key] = f"{requirement.name}=={metadata.version(requirement.name)}"
                todo.append(requirement.name)
    return sorted(pinned.values())


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Installation:
    work = tmp_path_factory.mktemp("installed")
    assert not work.resolve().is_relative_to(REPO)
    source = work / "source"
    copy_source(source)   # the wheel is built from this copy: a build leaves nothing in the checkout
    wheels = work / "wheels"
    _pip("wheel", "--no-deps", "--no-build-isolation", "--no-index", "--quiet", source, "-w", wheels)
    _pip("wheel", "--quiet", "-w", wheels, *pinned_requirements("provisioning"))
    venv = work / "venv"
    # This interpreter is the checkout's virtualenv; venv builds on the base Python below it.
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", venv], check=True, timeout=DEADLINE)
    _pip("--python", venv / "bin/python", "install", "--no-index", "--find-links", wheels, "--quiet", "provisioning")
    cwd = work / "operator"
    cwd.mkdir()
    return Installation(venv, cwd)


def _site_packages(inst: Installation) -> Path:
    return next((inst.venv / "lib").glob("python3*/site-packages"))


def test_the_installation_imports_nothing_from_the_checkout(installed):
    assert "include-system-site-packages = false" in (installed.venv / "pyvenv.cfg").read_text()
    probe = installed.run("python", "-c", "import json, sys, provisioning, provisioning_backup_rsnapshot.plugin as p; "
                          "print(json.dumps([provisioning.__file__, p.__file__, sys.path]))")
    assert probe.returncode == 0, probe.stderr
    core, plugin, path = json.loads(probe.stdout)
    site = _site_packages(installed)
    assert Path(core).is_relative_to(site) and Path(plugin).is_relative_to(site), (core, plugin)
    assert not [entry for entry in path if entry and Path(entry).resolve().is_relative_to(REPO)], path
    # No editable-install finder or .pth pointing back at a source tree.
    assert not list(site.glob("__editable__*")) and not list(site.glob("*.pth"))
    for name in COMMANDS:
        assert os.access(installed.bin(name), os.X_OK), name
        assert installed.bin(name).read_text().startswith(f"#!{installed.python}\n"), name


def test_every_module_of_the_checkout_is_in_the_wheel(installed):
    """A package added to the checkout but not to setup.cfg would work in a checkout only."""
    site = _site_packages(installed)
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    mapped = dict(line.split(" = ") for line in cfg["options"]["package_dir"].strip().splitlines())
    sources = {"provisioning": REPO / "provisioning"}
    for folder in sorted((REPO / "plugins").iterdir()):
        if (folder / "__init__.py").is_file():
            names = [name for name, where in mapped.items() if REPO / where == folder]
            assert names, f"{folder} is not mapped to a package in setup.cfg [options] package_dir"
            sources[names[0]] = folder
    for package, folder in sources.items():
        modules = {p.relative_to(folder) for p in folder.rglob("*.py") if "etc" not in p.relative_to(folder).parts}
        missing = sorted(str(m) for m in modules if not (site / package / m).is_file())
        assert not missing, f"not installed from {folder}: {missing}"


def _checkout_etc() -> dict[str, bytes]:
    root = REPO / "etc"
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_every_file_under_etc_ships_inside_the_package(installed):
    """The example configuration, the template, the schema and any unit under etc/: `files` lists them all."""
    listing = installed.run("provisioning-daemon", "files")
    assert listing.returncode == 0, listing.stderr
    site = _site_packages(installed)
    shipped = {}
    for line in listing.stdout.splitlines()[1:]:
        name, path = line.split("\t")
        assert Path(path) == site / "provisioning/etc" / name
        shipped[name] = Path(path).read_bytes()
    assert shipped == _checkout_etc()
    assert {"Provisioning/Global.conf", "Provisioning/Backup/Rsnapshot.conf.template",
            "Provisioning/Backup/rsnapshot.account.template", "Provisioning/schema/stoney-backup.ldif"} <= set(shipped)


def test_files_prints_and_copies_the_example_configuration_but_replaces_nothing(installed, tmp_path):
    example = (REPO / "etc/Provisioning/Backup/Rsnapshot.conf.template").read_text()
    printed = installed.run("provisioning-daemon", "files", "--print", "Rsnapshot.conf.template")
    assert printed.returncode == 0 and printed.stdout == example

    target = tmp_path / "Rsnapshot.conf"
    copied = installed.run("provisioning-daemon", "files", "--copy", "Backup/Rsnapshot.conf.template", target)
    assert copied.returncode == 0, copied.stderr
    assert target.read_text() == example and stat.S_IMODE(target.stat().st_mode) == 0o600

    # A file that is there is never replaced, nor written through a link planted in the target's place.
    target.write_text("mine\n")
    victim = tmp_path / "victim"
    victim.write_text("victim\n")
    (tmp_path / "link.conf").symlink_to(victim)
    for existing in (target, tmp_path / "link.conf"):
        refused = installed.run("provisioning-daemon", "files", "--copy", "Global.conf", existing)
        assert refused.returncode == 3 and "File exists" in refused.stderr, refused
    assert target.read_text() == "mine\n" and victim.read_text() == "victim\n"

    unknown = installed.run("provisioning-daemon", "files", "--print", "nope.conf")
    assert unknown.returncode == 2 and "no shipped file nope.conf; there are: " in unknown.stderr


def test_the_installed_home_script_builds_a_home(installed, tmp_path):
    jail = tmp_path / "jail"
    result = installed.run("prov-backup-create-home", jail, f"/home/{UID}", UID, UID, UID)
    assert result.returncode == 0, result.stderr
    incoming = jail / f"home/{UID}/incoming"
    info = incoming.stat()
    assert (info.st_uid, info.st_gid, stat.S_IMODE(info.st_mode)) == (int(UID), int(UID), 0o700)
    assert installed.run("prov-backup-create-home", jail).returncode == 2


# ---------------------------------------------------------------- the wiki's cycle

def wiki_edited(slapd, subtree: str, cookie: str, paths: dict[str, str]) -> str:
    """The wiki's configuration as an operator edits it: [Database] for ``slapd`` and ``subtree``, COOKIE_FILE
    ``cookie``, and ``paths`` (each the wiki's line -> ours; every line replaced is there exactly once)."""
    text = WIKI_CONF.read_text()
    changes = {
        "SERVER = ldaps://ldapm.tombstone.ch": f"SERVER = {slapd.ldap_uri}",
        "ADMIN_USER = cn=Manager,dc=foss-cloud,dc=org": f"ADMIN_USER = {slapd.root_dn}",
        "ADMIN_PASSWORD = <PASSWORD>": f"ADMIN_PASSWORD = {slapd.root_pw}",
        "SERVICE_SUBTREE = ou=accounts,ou=backup,ou=services,dc=foss-cloud,dc=org": f"SERVICE_SUBTREE = {subtree}",
        "COOKIE_FILE = /home/pat/repos/stepping-stone/prov-backup-rsnapshot/prov-backup-rsnapshot/etc/Provisioning/"
        "Backup/rsnapshot.cookie": f"COOKIE_FILE = {cookie}",
        **paths,
    }
    for old, new in changes.items():
        assert text.count(old) == 1, old
        text = text.replace(old, new)
    return text


def _wiki_configuration(inst: Installation, slapd, subtree: str, root: Path) -> Path:
    """The wiki's configuration as it is, but [Database] and paths (and BACKUP_ROOT, a path, added)."""
    text = wiki_edited(slapd, subtree, f"{root}/var/lib/provisioning/rsnapshot.cookie", {
        "RSNAPSHOT_CONFIG_FILE = /etc/rsnapshot/rsnapshot.conf.%uid%":
            f"RSNAPSHOT_CONFIG_FILE = {root}/etc/rsnapshot/rsnapshot.conf.%uid%",
        "SET_QUOTA_CMD = /usr/sbin/setquota": f"SET_QUOTA_CMD = {root}/bin/setquota",
        "CREATE_CHROOT_CMD = /root/createDummyBackupDirectory.sh":
            f"CREATE_CHROOT_CMD = {inst.bin('prov-backup-create-chroot')}",
        "MOUNTPOINT = /": f"MOUNTPOINT = /\nBACKUP_ROOT = {root}/var/backup",
    })
    assert "RSNAPSHOT_TEMPLATE" not in text and "LOG_DEBUG = 1" in text
    _assert_only_database_and_paths_changed(WIKI_CONF.read_text(), text)
    for folder in ("var/lib/provisioning", "etc/rsnapshot", "var/backup", "bin"):
        (root / folder).mkdir(parents=True)
    write_recorder(root / "bin/setquota", root / "setquota.calls")
    config = root / "etc/Provisioning/Backup/Rsnapshot.conf"
    config.parent.mkdir(parents=True)
    config.write_text(text)
    config.chmod(0o600)
    return config


def _assert_only_database_and_paths_changed(before: str, after: str) -> None:
    def keys(text: str) -> dict[tuple[str, str], str]:
        section, found = "", {}
        for line in text.splitlines():
            if match := re.fullmatch(r"\[(.+)\]", line.strip()):
                section = match[1]
            elif " = " in line and not line.startswith("#"):
                key, value = line.split(" = ", 1)
                found[section, key] = value
        return found
    old, new = keys(before), keys(after)
    changed = {k for k in old.keys() | new.keys() if old.get(k) != new.get(k)}
    paths = {("Backup", "RSNAPSHOT_CONFIG_FILE"), ("Backup", "SET_QUOTA_CMD"), ("Backup", "CREATE_CHROOT_CMD"),
             ("Backup", "BACKUP_ROOT")}
    assert {k for k in changed if k[0] != "Database"} == paths, changed


def _calls(path: Path) -> list[list[str]]:
    return [line.split("\t")[1:] for line in path.read_text().splitlines()] if path.exists() else []


class Entry:
    def __init__(self, slapd, dn: str) -> None:
        self.slapd, self.dn = slapd, dn

    def get(self) -> dict[str, str] | None:
        conn = self.slapd.connect()
        try:
            found = conn.search_s(self.dn, ldap.SCOPE_BASE)
        except ldap.NO_SUCH_OBJECT:
            return None
        finally:
            conn.unbind_s()
        return {k: v[0].decode() for k, v in found[0][1].items()}

    def wait_mode(self, mode: str, daemon: subprocess.Popen, log: Path) -> dict[str, str]:
        def reached():
            if daemon.poll() is not None:
                raise AssertionError(f"daemon exited {daemon.returncode}:\n{log.read_text()[-3000:]}")
            entry = self.get()
            return entry if entry and entry.get("sstProvisioningMode") == mode else None
        try:
            return wait_until(reached, f"{self.dn} to reach {mode}")
        except AssertionError as err:
            raise AssertionError(f"{err}\n{log.read_text()[-3000:]}") from None


def test_the_wikis_walk_through_with_the_installed_package(installed, slapd, subtree, tmp_path):
    root = tmp_path / "host"
    config = _wiki_configuration(installed, slapd, subtree, root)
    site = _site_packages(installed)
    template = site / "provisioning/etc/Provisioning/Backup/rsnapshot.account.template"

    # --check, as an operator would first: it passes, with the package's Global.conf and template.
    check = installed.run("provisioning-daemon", "-c", config, "-t")
    assert check.returncode == 0, check.stdout + check.stderr
    host_global = Path("/etc/Provisioning/Global.conf")
    global_conf = host_global if host_global.is_file() else site / "provisioning/etc/Provisioning/Global.conf"
    assert f"is valid; Global.conf {global_conf}" in check.stdout
    assert f"RSNAPSHOT_TEMPLATE: {template} passes rsnapshot configtest" in check.stdout

    data = root / "data"
    made = installed.run("createBackupAccountLDIF", "--uid", UID, "--output", data, "--base", subtree,
                         "--backup-root", root / "var/backup")
    assert made.returncode == 0, made.stderr

    log = root / "daemon.log"
    with open(log, "w") as out:
        daemon = subprocess.Popen([str(installed.bin("provisioning-daemon")), "-c", str(config)],
                                  stdout=out, stderr=subprocess.STDOUT, cwd=installed.cwd, env=installed.env(),
                                  start_new_session=True)
    try:
        _walk_through(installed, slapd, subtree, root, config, data, template, daemon, log)
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(DEADLINE) == 0, log.read_text()[-3000:]
    finally:
        if daemon.poll() is None:
            os.killpg(daemon.pid, signal.SIGKILL)
            daemon.wait(DEADLINE)
    assert "Traceback" not in log.read_text()


def _walk_through(inst: Installation, slapd, subtree: str, root: Path, config: Path, data: Path,
                  template: Path, daemon: subprocess.Popen, log: Path) -> None:
    entry = Entry(slapd, f"uid={UID},{subtree}")
    account = root / f"var/backup/0/300/724/{UID}"
    jail, rsnapshot_conf = account / "chroot", root / f"etc/rsnapshot/rsnapshot.conf.{UID}"

    def load(step: str) -> None:
        result = inst.run("loadOpenLDAPsingleLDIF", "-c", config, data / f"{step}_{UID}.ldif")
        assert result.returncode == 0, result.stdout + result.stderr

    load("01_add")
    assert_done(entry.wait_mode("added", daemon, log), "added")
    incoming = (jail / f"home/{UID}/incoming").stat()
    assert (incoming.st_uid, stat.S_IMODE(incoming.st_mode)) == (int(UID), 0o700)
    # The installed full-chroot script made the jail: the account in its passwd, a shell in it.
    assert f"{UID}:x:{UID}:{UID}:" in (jail / "etc/passwd").read_text()
    assert (jail / "bin/sh").exists()
    # Named by the installed console script's path, the builder runs in the daemon, and the
    # jail's programs are hard links into the filesystem's jail image, not copies (issue 20).
    assert "is the shipped jail builder: it runs in the daemon" in log.read_text()
    image = {(f.stat().st_dev, f.stat().st_ino)
             for f in (root / "var/backup/.jail-images").glob("*/root/**/*") if f.is_file()}
    programs = [f.lstat() for f in (jail / "usr").rglob("*") if f.is_file() and not f.is_symlink()]
    assert len(programs) >= 3 and all((p.st_dev, p.st_ino) in image for p in programs)      # sh, libc, loader
    assert _calls(root / "setquota.calls") == [["-u", UID, "1048576", "1048576", "0", "0", "/"]]
    rendered = rsnapshot_conf.read_text()
    # Rendered from the template the package ships (no RSNAPSHOT_TEMPLATE in the configuration).
    fixed = [line for line in template.read_text().splitlines() if "%" not in line]
    assert [line for line in rendered.splitlines() if line in fixed] == fixed
    assert "retain\tdaily\t7\n" in rendered and f"snapshot_root\t{account}/snapshots/\n" in rendered

    load("02_modify")
    assert_done(entry.wait_mode("modified", daemon, log), "modified")
    assert _calls(root / "setquota.calls")[1:] == [["-u", UID, "2097152", "2097152", "0", "0", "/"]]
    assert "retain\tdaily\t14\n" in rsnapshot_conf.read_text()

    load("03_delete")
    done = entry.wait_mode("deleted", daemon, log)
    assert_done(done, "deleted")
    assert _calls(root / "setquota.calls")[2:] == [["-u", UID, "0", "0", "0", "0", "/"]]
    assert not rsnapshot_conf.exists() and not account.exists()
    archived = list((root / "var/backup/archive").iterdir())
    assert [p.name.split("-")[0] for p in archived] == [UID]

    load("04_remove")
    wait_until(lambda: entry.get() is None, f"{entry.dn} to leave the directory")
    assert daemon.poll() is None, log.read_text()[-3000:]

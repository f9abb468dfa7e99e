"""The command line: options, configuration errors, exit codes, daemon mode."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from provisioning.sandbox.layout import REPO, render_ini

from helpers import DaemonProcess

# The wiki page's example configuration, with only its paths and password changed.
WIKI_EXAMPLE = """
[Global]
# If true the script logs every information to the log-file.
LOG_DEBUG = 1

# If true the script logs additional information to the log-file.
LOG_INFO = 1

#If true the script logs warnings to the log-file.
LOG_WARNING = 1

#If true the script logs errors to the log-file.
LOG_ERR = 1

ENVIRONMENT = pat-GT60

[Database]
BACKEND = LDAP
SERVER = ldaps://ldapm.tombstone.ch
PORT = 636
ADMIN_USER = cn=Manager,dc=foss-cloud,dc=org
ADMIN_PASSWORD = not-the-real-one
SERVICE_SUBTREE = ou=accounts,ou=backup,ou=services,dc=foss-cloud,dc=org
COOKIE_FILE = {root}/rsnapshot.cookie
DEFAULT_COOKIE = rid=001,csn=
SEARCH_FILTER = (&(entryCSN>=%entryCSN%)(objectClass=*))

[Service]
MODUS = selfcare
TRANSPORTAPI = LocalCLI
SERVICE = Backup
TYPE = Rsnapshot

SYSLOG = Backup-Rsnapshot

[Gateway]
HOST = localhost
USER = provisioning
DSA_FILE = none

[Backup]
RSNAPSHOT_CONFIG_FILE = {root}/rsnapshot.conf.%uid%
SET_QUOTA_CMD = /bin/true
CREATE_CHROOT_CMD = {chroot}
MOUNTPOINT = /
BACKUP_ROOT = {root}
"""


def _wiki_config(tmp_path: Path, *replacements: tuple[str, str], chroot: object = None) -> Path:
    """The wiki's example as Rsnapshot.conf in tmp_path, with (old, new) text replacements."""
    text = WIKI_EXAMPLE.format(root=tmp_path, chroot=chroot or REPO / "bin/prov-backup-create-home")
    for old, new in replacements:
        assert old in text, old
        text = text.replace(old, new)
    config = tmp_path / "Rsnapshot.conf"
    config.write_text(text)
    return config


def _daemon(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "provisioning", *args],
                          capture_output=True, text=True, timeout=timeout)


def _quick_global(path: Path) -> Path:
    path.write_text(render_ini({"Global": {"SLEEP": 0, "ATTEMPTS": 1}}))
    return path


def test_the_wikis_example_configuration_is_accepted(tmp_path):
    config = _wiki_config(tmp_path)
    result = _daemon("-c", str(config), "-g", str(_quick_global(tmp_path / "Global.conf")), "-t")
    # The configuration passes; only the wiki's LDAP server is out of reach from here.
    assert result.returncode == 4, result.stdout + result.stderr
    assert "configuration problem" not in result.stderr
    assert "ldaps://ldapm.tombstone.ch:636" in result.stderr + result.stdout


def test_a_broken_configuration_lists_every_error_and_starts_nothing(tmp_path):
    config = _wiki_config(tmp_path, ("BACKEND = LDAP", "BACKEND = MySQL"), ("PORT = 636", "PORT = ldaps"),
                          ("MODUS = selfcare", "MODUS = auto"), ("TRANSPORTAPI = LocalCLI", "TRANSPORTAPI = Telnet"),
                          ("LOG_INFO = 1", "LOG_INFO = maybe"), ("MOUNTPOINT = /", "MOUNTPOINT = relative/path"),
                          ("SERVICE_SUBTREE = ou=accounts,ou=backup,ou=services,dc=foss-cloud,dc=org\n", ""))
    global_conf = tmp_path / "Global.conf"
    global_conf.write_text(render_ini({"Operation Mode": {"ATTEMPTS": "none"}}))
    result = _daemon("-c", str(config), "-g", str(global_conf))
    assert result.returncode == 3
    errors = [line for line in result.stderr.splitlines() if "nothing started" not in line]
    expected = [
        f"{config}: [Global] LOG_INFO: ",
        f'{config}: [Database] BACKEND: "MySQL" is not valid; valid choices: LDAP',
        f"{config}: [Database] PORT: ",
        f"{config}: [Database] SERVICE_SUBTREE: missing (required)",
        f'{config}: [Service] MODUS: "auto" is not valid; valid choices: selfcare, LDAP, combined',
        f'{config}: [Service] TRANSPORTAPI: "Telnet" is not valid; valid choices: LocalCLI, CLISSH',
        f'{config}: [Backup] MOUNTPOINT: "relative/path" is not an absolute path',
        f"{global_conf}: [Operation Mode] ATTEMPTS: ",
    ]
    for start in expected:
        assert any(line.startswith(f"provisioning-daemon: {start}") for line in errors), (start, result.stderr)
    assert len(errors) == len(expected)
    assert "provisioning-daemon: 8 configuration problem(s); nothing started" in result.stderr
    assert not (tmp_path / "rsnapshot.cookie").exists() and not (tmp_path / "rsnapshot.cookie.lock").exists()


def test_an_unknown_service_names_the_installed_plugins(tmp_path):
    config = _wiki_config(tmp_path, ("TYPE = Rsnapshot", "TYPE = Bacula"))
    result = _daemon("-c", str(config))
    assert result.returncode == 3
    assert "[Service] SERVICE/TYPE: no plugin for SERVICE = Backup, TYPE = Bacula" in result.stderr
    assert "installed: Backup/Rsnapshot" in result.stderr


def test_an_unknown_modus_names_the_choices(tmp_path):
    config = _wiki_config(tmp_path, ("MODUS = selfcare", "MODUS = mirror"))
    result = _daemon("-c", str(config))
    assert result.returncode == 3
    assert '[Service] MODUS: "mirror" is not valid; valid choices: selfcare, LDAP, combined' in result.stderr


def test_a_claim_lease_shorter_than_a_command_is_refused(tmp_path):
    config = _wiki_config(tmp_path, ("MODUS = selfcare", "MODUS = selfcare\nCOMMAND_TIMEOUT = 600\nCLAIM_LEASE = 300"))
    result = _daemon("-c", str(config))
    assert result.returncode == 3
    assert "[Service] CLAIM_LEASE: 300 s must be longer than COMMAND_TIMEOUT (600 s)" in result.stderr


def test_plugin_start_checks_name_the_key(tmp_path):
    config = _wiki_config(tmp_path, chroot=tmp_path / "missing-script")
    result = _daemon("-c", str(config), "-g", str(_quick_global(tmp_path / "Global.conf")))
    assert result.returncode == 3
    assert f"[Backup] CREATE_CHROOT_CMD: program {tmp_path}/missing-script does not exist" in result.stderr


def test_a_missing_configuration_file_is_reported(tmp_path):
    result = _daemon("-c", str(tmp_path / "nope.conf"))
    assert result.returncode == 3 and f"{tmp_path}/nope.conf: cannot read: No such file or directory" in result.stderr


def test_usage_errors_exit_2():
    result = _daemon()
    assert result.returncode == 2 and "-c/--config" in result.stderr


def test_global_conf_is_found_next_to_the_installation(host):
    result = _daemon("-c", str(host.config), "-t", "-d")
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"Global.conf {REPO}/etc/Provisioning/Global.conf" in result.stdout


def test_dry_run_with_the_short_options_of_the_original(host, directory):
    dn = directory.add("3723707")
    daemon = DaemonProcess(host, "-r").start()
    daemon.wait_for(r"DRY-RUN: would modify .*sstProvisioningMode=adding")
    assert daemon.stop() == 0
    assert directory.get(dn)["sstProvisioningMode"] == "add"


def test_a_world_readable_configuration_is_warned_about(host):
    host.config.chmod(0o644)
    result = _daemon("-c", str(host.config), "-g", str(host.global_config), "-t", "-d")
    assert result.returncode == 0
    assert (f"WARN configuration: {host.config} can be read by every user of this host and holds "
            f"ADMIN_PASSWORD: chmod o-r it") in result.stdout.splitlines()
    host.config.chmod(0o600)
    assert "holds ADMIN_PASSWORD" not in _daemon("-c", str(host.config), "-g", str(host.global_config), "-t", "-d").stdout


def test_the_shipped_template_has_production_defaults_and_the_wikis_keys(host, tmp_path):
    from provisioning.config.loader import load

    template = (REPO / "etc/Provisioning/Backup/Rsnapshot.conf.template").read_text()
    for key in ("LOG_DEBUG", "LOG_INFO", "LOG_WARNING", "LOG_ERR", "ENVIRONMENT", "BACKEND", "SERVER", "PORT",
                "ADMIN_USER", "ADMIN_PASSWORD", "SERVICE_SUBTREE", "COOKIE_FILE", "DEFAULT_COOKIE",
                "SEARCH_FILTER", "MODUS", "TRANSPORTAPI", "SERVICE", "TYPE", "SYSLOG", "HOST", "USER",
                "DSA_FILE", "RSNAPSHOT_CONFIG_FILE", "SET_QUOTA_CMD", "CREATE_CHROOT_CMD", "MOUNTPOINT"):
        assert f"\n{key} = " in template, key
    # docs/deployment.md's rule: the daemon binds as a service account of its own, not as the rootDN.
    assert "\nADMIN_USER = cn=prov-backup-rsnapshot,ou=services," in template and "cn=Manager" not in template
    # Only [Database] and the paths changed, as an operator would: it passes --check.
    root = host.layout.root
    text = template
    for old, new in (("SERVER = ldaps://ldap.example.org", f"SERVER = {host.slapd.ldap_uri}"), ("PORT = 636\n", ""),
                     ("ADMIN_USER = cn=prov-backup-rsnapshot,ou=services,dc=stoney-cloud,dc=org",
                      f"ADMIN_USER = {host.slapd.root_dn}"),
                     ("ADMIN_PASSWORD = change-me", f"ADMIN_PASSWORD = {host.slapd.root_pw}"),
                     ("SERVICE_SUBTREE = ou=accounts,ou=backup,ou=services,dc=stoney-cloud,dc=org",
                      f"SERVICE_SUBTREE = {host.subtree}"),
                     ("/var/lib/provisioning/", f"{host.layout.cookie.parent}/"),
                     ("/etc/rsnapshot/", f"{host.layout.rsnapshot_dir}/"),
                     ("/usr/sbin/setquota", str(host.layout.setquota)),
                     ("/usr/local/bin/prov-backup-create-chroot", str(REPO / "bin/prov-backup-create-chroot")),
                     ("# BACKUP_ROOT = /var/backup", f"BACKUP_ROOT = {host.layout.backup_root}")):
        assert old in text, old
        text = text.replace(old, new)
    config = tmp_path / "Rsnapshot.conf"
    config.write_text(text)
    config.chmod(0o600)
    assert load(config, None).log_flag("LOG_DEBUG") is False
    result = _daemon("-c", str(config), "-t")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "DEBUG" not in result.stdout + result.stderr

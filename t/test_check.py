"""provisioning-daemon --check (-t): one line per check, every problem in one run, exit code."""
from __future__ import annotations

import inspect
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pluggy
import pytest

from provisioning.hooks import specs as hookspecs
from provisioning.base.checkline import CheckLine, Status
from provisioning.operator.checks import _plugin_checks
from provisioning.hooks.specs import hookimpl
from provisioning.hooks.service import Service, ServiceContext
from provisioning.runtime.startup import load_configuration
from provisioning.transport import LocalCLI

from helpers import DaemonProcess


def _run(host, *args: str, env: dict | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "provisioning", "-c", str(host.config),
                           "-g", str(host.global_config), *args],
                          capture_output=True, text=True, timeout=timeout, env=env)


def _check(host, env: dict | None = None) -> tuple[int, list[str]]:
    result = _run(host, "-t", env=env)
    return result.returncode, result.stdout.splitlines()


def _line(lines: list[str], start: str) -> str:
    found = [line for line in lines if line.startswith(start)]
    assert len(found) == 1, (start, lines)
    return found[0]


def _listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


@pytest.fixture
def tmpdir_env(tmp_path) -> dict:
    """TMPDIR of the checked command: the template is proven in a folder made there."""
    folder = tmp_path / "tmpdir"
    folder.mkdir()
    return {**os.environ, "TMPDIR": str(folder)}


def test_a_good_configuration_passes_with_one_line_per_check_and_leaves_nothing_behind(host, tmpdir_env):
    state = host.layout.cookie.parent
    before = _listing(state)
    code, lines = _check(host, tmpdir_env)
    assert code == 0, lines
    uri = host.slapd.ldap_uri
    for start in ["OK   configuration: ", "OK   plugin: Backup/Rsnapshot loaded from provisioning_backup_rsnapshot",
                  "OK   Backup/Rsnapshot start: ", "OK   Backup/Rsnapshot SET_QUOTA_CMD: ",
                  "OK   Backup/Rsnapshot CREATE_CHROOT_CMD: ", "OK   Backup/Rsnapshot RSNAPSHOT_CMD: ",
                  "OK   Backup/Rsnapshot BACKUP_ROOT: ", "OK   Backup/Rsnapshot MOUNTPOINT: ",
                  "OK   Backup/Rsnapshot RSNAPSHOT_CONFIG_FILE: ",
                  "OK   Backup/Rsnapshot RSNAPSHOT_TEMPLATE: ",
                  f"OK   LDAP reachable: {uri}", f"OK   LDAP TLS: {uri}: not used (loopback address)",
                  f"OK   LDAP bind: {uri} accepts {host.slapd.root_dn}",
                  f"OK   LDAP sync control: {uri} offers 1.3.6.1.4.1.4203.1.9.1.1",
                  f"OK   SERVICE_SUBTREE: {host.subtree} exists",
                  "OK   COOKIE_FILE: ", "OK   STORE_FILE: ", "OK   LOCK_FILE: "]:
        _line(lines, start)
    # The stand-in setquota on a filesystem without user quota: it cannot tell.
    quota = _line(lines, "WARN Backup/Rsnapshot quota on MOUNTPOINT: ")
    assert "has no user quota" in quota and "cannot tell" in quota
    assert "passes rsnapshot configtest" in _line(lines, "OK   Backup/Rsnapshot RSNAPSHOT_TEMPLATE")
    assert lines[-1].startswith("check passed: 0 FAIL, ")
    assert _listing(state) == before                  # writability tested without leaving a file
    assert list(Path(tmpdir_env["TMPDIR"]).iterdir()) == []   # the template's test folder is gone


def test_every_problem_of_configuration_plugin_and_folders_comes_in_one_run(host):
    missing = host.layout.root / "missing"
    host.set("Database", COOKIE_FILE=missing / "state/Backup-Rsnapshot.cookie")
    host.set("Backup", CREATE_CHROOT_CMD=missing / "create-chroot", BACKUP_ROOT=missing / "backup",
             MOUNTPOINT=missing / "mnt")
    # At a normal start: all six, then the count.
    result = _run(host)
    assert result.returncode == 3
    problems = [line for line in result.stderr.splitlines() if line.startswith("provisioning-daemon: ")]
    for text in (f"[Database] COOKIE_FILE: folder {missing}/state does not exist",
                 f"[Database] STORE_FILE: folder {missing}/state does not exist",
                 f"[Service] LOCK_FILE: folder {missing}/state does not exist",
                 f"[Backup] CREATE_CHROOT_CMD: program {missing}/create-chroot does not exist",
                 f"[Backup] BACKUP_ROOT: folder {missing}/backup does not exist",
                 f"[Backup] MOUNTPOINT: folder {missing}/mnt does not exist"):
        assert sum(text in line for line in problems) == 1, (text, result.stderr)
    assert problems[-1] == "provisioning-daemon: 6 configuration problem(s); nothing started"
    # With -t: the same six as FAIL lines, each once, and the count.
    code, lines = _check(host)
    assert code == 3
    fails = [line for line in lines if line.startswith("FAIL")]
    assert len(fails) == 6, lines
    assert lines[-1].startswith("check failed: 6 FAIL")


def test_a_misspelt_key_fails_the_check_and_the_start_alike(host, directory):
    host.set("Backup", SET_QUOTA_CMD=None, SET_QUOTA_COMMAND=host.layout.setquota)
    host.set("Service", LOG_FLIE="x")
    code, lines = _check(host)
    assert code == 3
    fails = [line for line in lines if line.startswith("FAIL")]
    misspelt = [f"{host.config}: [Backup] SET_QUOTA_COMMAND: unknown key; did you mean SET_QUOTA_CMD?",
                f"{host.config}: [Service] LOG_FLIE: unknown key; did you mean LOG_FILE?"]
    for problem in misspelt:
        assert f"FAIL configuration: {problem}" in fails
    # What the typo means: the default /usr/sbin/setquota, on a filesystem without user quota.
    assert "setquota fails on every add" in _line(lines, "FAIL Backup/Rsnapshot quota on MOUNTPOINT: ")
    assert lines[-1].startswith("check failed: 3 FAIL (2 configuration problem(s))")
    # A start is refused with the same two problems, before anything runs (it used to warn
    # and run with the default).
    result = _run(host, "--once")
    assert result.returncode == 3
    for problem in misspelt:
        assert f"provisioning-daemon: {problem}" in result.stderr.splitlines()
    assert "provisioning-daemon: 2 configuration problem(s); nothing started" in result.stderr
    assert "starting Backup/Rsnapshot" not in result.stdout + result.stderr


def test_a_misspelt_section_is_named_once_not_as_six_missing_keys(host):
    text = host.config.read_text().replace("[Database]", "[Databse]").replace("[Gateway]", "[Extra]")
    host.config.write_text(text)
    result = _run(host)
    assert result.returncode == 3
    lines = [line for line in result.stderr.splitlines() if line.startswith("provisioning-daemon: ")]
    assert lines[0] == (f"provisioning-daemon: {host.config}: section [Database] is missing (required: "
                        f"ADMIN_PASSWORD, ADMIN_USER, BACKEND, COOKIE_FILE, SERVER, SERVICE_SUBTREE); the file "
                        f"has an unknown section [Databse]: misspelt?")
    assert f"provisioning-daemon: {host.config}: [Databse]: unknown section (with 9 key(s)); " \
           f"did you mean [Database]?" in lines
    assert f"provisioning-daemon: {host.config}: [Extra]: unknown section (with 3 key(s))" in lines
    assert lines[-1] == "provisioning-daemon: 3 configuration problem(s); nothing started; the plugin's own checks " \
                        "run once these are fixed"
    assert not any("Extra: unknown key" in line for line in lines)
    code, checked = _check(host)
    assert code == 3
    assert "WARN LDAP: not checked: [Database] has problems (above)" in checked
    assert "WARN Backup/Rsnapshot checks: not run until the configuration is valid" in checked


def test_a_key_in_the_wrong_section_is_pointed_to_its_section(host):
    host.set("Database", ENVIRONMENT="backup-01")
    code, lines = _check(host)
    assert code == 3
    assert f"FAIL configuration: {host.config}: [Database] ENVIRONMENT: unknown key; it belongs in " \
           f"[Global]" in lines


def test_the_quota_tools_setquota_on_a_filesystem_without_user_quota_fails(host):
    # Only looked at: --check runs quotaon -p, never setquota.
    host.set("Backup", SET_QUOTA_CMD="/usr/sbin/setquota", MOUNTPOINT=host.layout.backup_root)
    code, lines = _check(host)
    assert code == 3
    line = _line(lines, "FAIL Backup/Rsnapshot quota on MOUNTPOINT: ")
    assert f"{host.layout.backup_root} has no user quota" in line and "mount it with usrquota" in line
    assert "setquota fails on every add" in line


def _fake_quotaon(host, output: str) -> dict:
    """quotaon -p as a kernel with quota would answer (this one has no quota on any mount)."""
    folder = host.layout.root / "fake-bin"
    folder.mkdir()
    (folder / "quotaon").write_text(f"#!/bin/sh\necho '{output}'\n")
    (folder / "quotaon").chmod(0o755)
    return {**os.environ, "PATH": f"{folder}:{os.environ['PATH']}"}


def test_user_quota_on_passes_and_off_fails(host):
    host.set("Backup", SET_QUOTA_CMD="/usr/sbin/setquota")
    env = _fake_quotaon(host, "user quota on / (/dev/vda) is on")
    code, lines = _check(host, env)
    assert _line(lines, "OK   Backup/Rsnapshot quota on MOUNTPOINT: ") == \
        "OK   Backup/Rsnapshot quota on MOUNTPOINT: user quota is on for / (/dev/vda)"
    assert code == 0
    (host.layout.root / "fake-bin/quotaon").write_text("#!/bin/sh\necho 'user quota on / (/dev/vda) is off'\n")
    code, lines = _check(host, env)
    assert code == 3
    assert "user quota is off for /" in _line(lines, "FAIL Backup/Rsnapshot quota on MOUNTPOINT: ")


def test_without_quotaon_the_quota_check_is_a_warning(host):
    env = {**os.environ, "PATH": "/usr/bin:/bin"}          # quotaon lives in /usr/sbin
    code, lines = _check(host, env)
    assert code == 0
    assert "quotaon is not installed" in _line(lines, "WARN Backup/Rsnapshot quota on MOUNTPOINT: ")


def test_a_template_that_rsnapshot_refuses_fails_and_leaves_no_folder(host, tmpdir_env):
    template = host.layout.root / "bad.template"
    template.write_text("config_version\t1.2\nsnapshot_root\t%snapshot_root%\nno_create_root\t1\n"
                        "cmd_rsync\t/nonexistent/rsync\n%retain%\nbackup\t%backup_source%\tincoming/\n")
    host.set("Backup", RSNAPSHOT_TEMPLATE=template)
    code, lines = _check(host, tmpdir_env)
    assert code == 3
    line = _line(lines, "FAIL Backup/Rsnapshot RSNAPSHOT_TEMPLATE: ")
    assert "fails rsnapshot configtest" in line and "/nonexistent/rsync" in line
    assert list(Path(tmpdir_env["TMPDIR"]).iterdir()) == []


def test_a_program_that_is_not_executable_fails(host):
    host.chroot_cmd.chmod(0o644)
    code, lines = _check(host)
    assert code == 3
    assert "is not an executable file" in _line(lines, "FAIL Backup/Rsnapshot CREATE_CHROOT_CMD: ")


def test_jail_programs_names_a_script_with_its_interpreter_and_fails_one_without(host, tmp_path):
    wrapper = tmp_path / "wrapper"
    wrapper.write_text("#!/bin/sh\nexec rsync \"$@\"\n")
    wrapper.chmod(0o755)
    host.set("Backup", JAIL_PROGRAMS=f"rsync {wrapper}")
    code, lines = _check(host)
    line = _line(lines, "OK   Backup/Rsnapshot JAIL_PROGRAMS: ")
    assert f"{wrapper} is {wrapper}, run by /bin/sh" in line, line
    wrapper.write_text("#!/opt/nowhere/sh\n")
    code, lines = _check(host)
    assert code == 3
    assert f"JAIL_PROGRAMS: {wrapper} is a script for /opt/nowhere/sh, which is not installed" in \
        _line(lines, "FAIL Backup/Rsnapshot JAIL_PROGRAMS: ")


@pytest.mark.skipif(os.geteuid() != 0, reason="logs in over ssh as root (CI runs as root)")
def test_the_clissh_gateway_gets_a_line_of_its_own(host, sshd, tmp_path):
    host.set("Service", TRANSPORTAPI="CLISSH")
    host.set("Gateway", **sshd)
    _, lines = _check(host)
    assert _line(lines, "OK   gateway: ").startswith(f"OK   gateway: root@127.0.0.1 port {sshd['PORT']}: "
                                                     "ssh lets us in and the python3 helper answers (")
    (tmp_path / "known_hosts").write_text("")
    host.set("Gateway", KNOWN_HOSTS=tmp_path / "known_hosts")
    code, lines = _check(host)
    assert code == 7                                    # as the daemon, which would wait for it, then give up
    assert re.search(r": out of reach: .*ssh exited 255: Host key verification failed",
                     _line(lines, "FAIL gateway: root@127.0.0.1 port "))


@pytest.mark.skipif(os.geteuid() != 0, reason="logs in over ssh as root (CI runs as root)")
def test_a_gateway_out_of_reach_is_one_line_not_every_program_missing(host, gateway_sshd):
    # Before: exit 3, and a FAIL line for every program and folder "cannot check ...: exited 255".
    host.set("Service", TRANSPORTAPI="CLISSH")
    host.set("Gateway", **gateway_sshd.gateway)
    gateway_sshd.kill()
    code, lines = _check(host)
    assert code == 7, lines
    assert re.search(r": out of reach: .*ssh exited 255: ssh: connect to host 127\.0\.0\.1 port \d+: Connection "
                     r"refused$", _line(lines, "FAIL gateway: "))
    assert _line(lines, "WARN Backup/Rsnapshot checks: ") == ("WARN Backup/Rsnapshot checks: not run: the gateway "
                                                              "(above) does not answer")
    assert [line for line in lines if line.startswith("FAIL")] == [_line(lines, "FAIL gateway: ")]


@pytest.mark.skipif(os.geteuid() != 0, reason="logs in over ssh as root (CI runs as root)")
def test_sessions_are_checked_against_the_gateways_max_sessions(host, sshd):
    # sshd -T reports the settings of the gateway's /etc/ssh/sshd_config: Debian's, MaxSessions 10.
    host.set("Service", TRANSPORTAPI="CLISSH")
    host.set("Gateway", **sshd)
    _, lines = _check(host)
    assert _line(lines, "OK   gateway SESSIONS: ") == ("OK   gateway SESSIONS: 8 helpers at most, below the gateway "
                                                       "sshd's MaxSessions 10")
    host.set("Gateway", SESSIONS=10)
    code, lines = _check(host)
    assert code == 3
    assert _line(lines, "FAIL gateway SESSIONS: ") == (
        "FAIL gateway SESSIONS: 10 helpers at most, but the gateway's sshd allows 10 sessions (MaxSessions): "
        "it would refuse the others; set SESSIONS below 10")


def test_a_wrong_password_fails_the_bind_line(host):
    host.set("Database", ADMIN_PASSWORD="wrong")
    code, lines = _check(host)
    assert code == 3
    assert f"refused {host.slapd.root_dn}: Invalid credentials" in _line(lines, "FAIL LDAP bind: ")
    assert not any(line.startswith("OK   SERVICE_SUBTREE") for line in lines)


def test_ldap_out_of_reach_exits_4(host, unused_port):
    host.set("Database", SERVER=f"ldap://127.0.0.1:{unused_port}")
    code, lines = _check(host)
    assert code == 4
    assert "Connection refused" in _line(lines, "FAIL LDAP reachable: ")


def test_a_second_server_that_is_down_is_a_warning(host, unused_port):
    host.set("Database", SERVER=f"ldap://127.0.0.1:{unused_port} {host.slapd.ldap_uri}")
    code, lines = _check(host)
    assert code == 0, lines
    assert "(another server in SERVER answers)" in _line(lines, "WARN LDAP reachable: ")
    assert _line(lines, "OK   LDAP reachable: ").endswith("accepts connections")


def test_a_subtree_whose_database_has_no_syncprov_fails(host):
    host.set("Database", SERVICE_SUBTREE="cn=schema,cn=config")
    code, lines = _check(host)
    assert code == 3
    assert "offers the sync control but not for cn=schema,cn=config" in _line(lines, "FAIL LDAP sync control: ")


def test_a_missing_subtree_fails(host):
    host.set("Database", SERVICE_SUBTREE=f"ou=nowhere,{host.subtree}")
    code, lines = _check(host)
    assert code == 3
    assert _line(lines, "FAIL SERVICE_SUBTREE: ").startswith(f"FAIL SERVICE_SUBTREE: ou=nowhere,{host.subtree} "
                                                            f"does not exist")


def test_a_state_folder_others_can_write_fails_and_a_cookie_link_is_not_followed(host):
    state = host.layout.cookie.parent
    victim = host.layout.root / "victim"
    victim.write_text("precious\n")
    host.layout.cookie.symlink_to(victim)
    code, lines = _check(host)
    assert code == 3
    assert "is a symbolic link" in _line(lines, "FAIL COOKIE_FILE: ")
    assert victim.read_text() == "precious\n"
    host.layout.cookie.unlink()
    state.chmod(0o777)
    try:
        code, lines = _check(host)
    finally:
        state.chmod(0o755)
    assert code == 3
    assert "writable by others" in _line(lines, "FAIL LOCK_FILE: ")


def test_a_read_only_state_folder_fails(host):
    state = host.layout.root / "ro-state"
    state.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(state)], check=True)
    try:
        host.set("Database", COOKIE_FILE=state / "Backup-Rsnapshot.cookie")
        code, lines = _check(host)
    finally:
        subprocess.run(["umount", str(state)], check=True)
    assert code == 3
    assert "does not take files: Read-only file system" in _line(lines, "FAIL COOKIE_FILE: ")


@pytest.mark.parametrize("fault", ["full", "read-only"])
def test_a_state_folder_that_went_full_or_read_only_is_a_warning_the_daemon_starts(host, directory, tmpdir_env,
                                                                                   fault):
    """Issue 18 item 3: the daemon starts on it (its position in memory), so ExecStartPre must not stop it."""
    state = host.layout.cookie.parent
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,mode=0755", "tmpfs", str(state)], check=True)
    try:
        daemon = DaemonProcess(host).start()
        directory.wait_mode(directory.add("3723707"), "added")
        assert daemon.stop() == 0
        if fault == "full":
            subprocess.run(["dd", "if=/dev/zero", f"of={state / 'filler'}", "bs=4096"], capture_output=True)
        else:
            subprocess.run(["mount", "-o", "remount,ro", str(state)], check=True)
        code, lines = _check(host, tmpdir_env)
    finally:
        subprocess.run(["umount", "-l", str(state)], check=True)
    assert code == 0, lines
    for key in ("COOKIE_FILE", "STORE_FILE", "LOCK_FILE"):
        line = _line(lines, f"WARN {key}: ")
        assert ("is full" if fault == "full" else "Read-only file system") in line
        assert "the daemon starts all the same" in line


def test_a_plugin_check_that_raises_is_a_fail_line(host):
    class Broken:
        @hookimpl
        def provisioning_check(self, ctx):
            raise RuntimeError("boom")

        @hookimpl
        def provisioning_start(self, ctx):
            return []

    class Odd:
        @hookimpl
        def provisioning_check(self, ctx):
            return [("thing", "ok", "fine"), ("thing", "maybe", "?"), CheckLine.warn("other", "hm")]

    config, _ = load_configuration(host.config, str(host.global_config))
    for plugin, expected in ((Broken(), [CheckLine.fail("X check", "the plugin raised RuntimeError: boom")]),
                             (Odd(), [CheckLine.ok("thing", "fine"),
                                      CheckLine.fail("X check", "returned ('thing', 'maybe', '?'), not a "
                                                                "(name, OK|WARN|FAIL, detail) line"),
                                      CheckLine("other", Status.WARN, "hm")])):
        manager = pluggy.PluginManager(hookspecs.PROJECT)
        manager.add_hookspecs(hookspecs)
        manager.register(plugin)
        assert _plugin_checks("X", Service(manager, ServiceContext(config, LocalCLI()))) == expected


@pytest.mark.parametrize("name", ["provisioning_check", "provisioning_status", "provisioning_return_values"])
def test_the_new_hooks_are_documented_like_the_others(name):
    doc = getattr(hookspecs, name).__doc__
    for parameter in inspect.signature(getattr(hookspecs, name)).parameters:
        assert f":param {parameter}:" in doc
    assert ":return:" in doc and len(doc.split("\n\n")[0]) > 20


@pytest.fixture
def unused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_starttls_is_verified_against_the_configured_ca(host, slapd):
    host.set("Database", START_TLS=1, CA_FILE=slapd.cafile)
    code, lines = _check(host)
    assert code == 0, lines
    assert _line(lines, "OK   LDAP TLS: ") == f"OK   LDAP TLS: {slapd.ldap_uri}: certificate verified against " \
                                            f"CA_FILE {slapd.cafile}"


def test_a_certificate_no_trusted_ca_signed_fails_the_tls_line(host, slapd):
    host.set("Database", START_TLS=1)           # the system's CAs do not know the test CA
    code, lines = _check(host)
    assert code == 3
    line = _line(lines, "FAIL LDAP TLS: ")
    assert "handshake failed" in line and "the system's CA store" in line
    assert not any(line.startswith(("OK   LDAP bind", "FAIL LDAP bind")) for line in lines)


def test_ldapi_needs_no_tls(host, slapd):
    host.set("Database", SERVER=slapd.ldapi_uri)
    code, lines = _check(host)
    assert code == 0, lines
    assert _line(lines, "OK   LDAP TLS: ") == f"OK   LDAP TLS: {slapd.ldapi_uri}: not needed (local socket)"


def test_an_unknown_plugin_is_one_fail_line_and_the_ldap_checks_still_run(host):
    host.set("Service", TYPE="Bacula")
    code, lines = _check(host)
    assert code == 3
    assert _line(lines, "FAIL plugin: ").startswith("FAIL plugin: no plugin for SERVICE = Backup, TYPE = Bacula")
    assert "installed: Backup/Rsnapshot" in _line(lines, "FAIL plugin: ")
    _line(lines, "OK   LDAP bind: ")
    assert lines[-1].startswith("check failed: 1 FAIL, ")


def test_a_missing_file_is_one_fail_line(tmp_path):
    result = subprocess.run([sys.executable, "-m", "provisioning", "-c", str(tmp_path / "nope.conf"), "-t"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 3
    lines = result.stdout.splitlines()
    assert _line(lines, "FAIL ") == f"FAIL configuration: {tmp_path}/nope.conf: cannot read: No such file or directory"
    assert lines[-1].startswith("check failed: 1 FAIL (1 configuration problem(s))")


def test_a_detail_of_several_lines_is_printed_as_one():
    # A command's stderr (ssh's, say) often has several lines; --check promises one per check.
    assert str(CheckLine.fail("gateway", "No host key is known\nHost key verification failed.\n")) == \
        "FAIL gateway: No host key is known / Host key verification failed."


def _in_a_terminal(argv: list[str]) -> str:
    """What a person at a terminal sees of ``argv`` (stdout and stderr on one pseudo-terminal)."""
    import pty
    main, child = pty.openpty()
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=child, stderr=child)
    os.close(child)
    seen = b""
    while True:
        try:
            chunk = os.read(main, 65536)
        except OSError:                   # EIO: the other side is closed
            break
        if not chunk:
            break
        seen += chunk
    os.close(main)
    proc.wait(60)
    return seen.decode(errors="replace").replace("\r\n", "\n")


@pytest.mark.skipif(os.path.exists("/dev/log"), reason="this host has /dev/log: the records go to syslog")
def test_at_a_terminal_check_shows_its_lines_and_problems_only(host, directory):
    """Friction 6: no "syslog socket ... not available" warning first, no plugin INFO or LOG_DEBUG
    record between the check lines; -d shows them."""
    host.set("Global", LOG_DEBUG=1)
    argv = [sys.executable, "-m", "provisioning", "-c", str(host.config), "-g", str(host.global_config), "-t"]
    seen = _in_a_terminal(argv).splitlines()
    assert seen and all(re.match(r"(OK|WARN|FAIL) |check (passed|failed)", line) for line in seen), seen
    debug = _in_a_terminal(argv + ["-d"])
    assert "DEBUG syslog socket /dev/log is not available: logging to stderr instead" in debug
    assert debug.count("syslog socket") == 1
    # Where no one watches (stderr into a file or a pipe) it stays a warning, said once.
    piped = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert piped.stderr.count("WARNING syslog socket /dev/log is not available: logging to stderr instead") == 1
    assert all(re.match(r"(OK|WARN|FAIL) |check (passed|failed)", line) for line in piped.stdout.splitlines())

"""The pytest plugin for plugin authors (provisioning.testing.plugin) as a separate pytest run sees it.

Loaded through its pytest11 entry point in any pytest run of an environment
where provisioning is installed, it must cost nothing there until a test asks
for a fixture; and its daemon fixture must not let a daemon that failed pass
unnoticed.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

INERT = '''
import os, sys

def test_loaded_but_inert(request):
    assert request.config.pluginmanager.get_plugin("provisioning.testing.plugin") is not None
    assert "ldap" not in sys.modules and "provisioning.testing.slapd" not in sys.modules
    assert "LDAPNOINIT" not in os.environ
'''

FAILED_DAEMON = '''
from provisioning.testing import wait_until

def test_a_daemon_that_ends_with_an_error(provisioning_daemon):
    # [Exec] with no command at all: the plugin's start-up check refuses, the daemon exits 3.
    daemon = provisioning_daemon("Generic/Exec", wait_ready=False)
    wait_until(lambda: not daemon.running, "the daemon to end")
'''

COLLECTED = '''
def test_a_daemon_whose_exit_code_the_test_took(provisioning_daemon):
    daemon = provisioning_daemon("Generic/Exec", wait_ready=False)
    assert daemon.wait_exit() == 3
'''

LEFT_RUNNING = '''
from pathlib import Path
from provisioning.testing import DaemonProcess

def test_fails_with_its_daemon_running(provisioning_service, tmp_path):
    files = provisioning_service("Generic/Exec", {"Exec": {"ADD_CMD": "/bin/true"}})
    daemon = DaemonProcess(files.config, files.global_config, files.root).start()
    Path(__file__).with_name("pid").write_text(str(daemon.proc.pid))
    assert False, "failed with the daemon running"
'''


def _pytest(folder: Path, source: str, tmp_path: Path) -> subprocess.CompletedProcess:
    (folder / "test_it.py").write_text(source)
    env = {k: v for k, v in os.environ.items() if k not in ("LDAPNOINIT", "PYTEST_ADDOPTS")}
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--basetemp",
                           str(tmp_path / "inner"), str(folder / "test_it.py")], cwd=folder, env=env,
                          capture_output=True, text=True, timeout=300)


def test_the_plugin_is_loaded_by_its_entry_point_and_does_nothing_until_asked(tmp_path):
    folder = tmp_path / "project"
    folder.mkdir()
    result = _pytest(folder, INERT, tmp_path)
    assert result.returncode == 0, result.stdout[-3000:]
    assert not (tmp_path / "inner").exists() or not list((tmp_path / "inner").glob("provisioning-slapd*"))


def test_a_daemon_that_exits_with_an_error_fails_the_test_that_started_it(tmp_path):
    folder = tmp_path / "project"
    folder.mkdir()
    result = _pytest(folder, FAILED_DAEMON, tmp_path)
    assert result.returncode == 1, result.stdout[-3000:]
    assert "1 passed, 1 error" in result.stdout
    assert "Generic.Exec.conf exited 3" in result.stdout.replace("/", ".")
    assert "ADD_CMD, MODIFY_CMD, DELETE_CMD: none is set" in result.stdout
    (folder / "test_it.py").unlink()
    result = _pytest(folder, COLLECTED, tmp_path)
    assert result.returncode == 0, result.stdout[-3000:]


def test_a_daemon_a_failed_test_left_running_is_killed_after_that_test(tmp_path):
    folder = tmp_path / "project"
    folder.mkdir()
    result = _pytest(folder, LEFT_RUNNING, tmp_path)
    assert result.returncode == 1 and "failed with the daemon running" in result.stdout, result.stdout[-3000:]
    pid = int((folder / "pid").read_text())
    assert not Path(f"/proc/{pid}").exists()      # its parent, pytest, reaped it: not even a zombie


def test_a_slapd_asked_to_run_too_deep_for_its_socket_runs_in_a_short_folder(tmp_path):
    from provisioning.testing import Slapd

    deep = tmp_path / ("d" * 100)
    deep.mkdir()
    server = Slapd(rundir=str(deep))
    server.start()
    try:
        assert server.connect().whoami_s() == f"dn:{server.root_dn}"
        assert not server.testrundir.startswith(str(deep)) and len(server.testrundir + "/ldapi") <= 107
    finally:
        server.stop()
    assert not Path(server._short_rundir).exists() and list(deep.iterdir()) == []


def test_a_slapd_whose_port_was_taken_before_it_bound_starts_on_another(tmp_path):
    # The race CI met: the free port slapdtest found is taken by someone else before
    # slapd binds it. Here the port is held on purpose, listening, for the first try.
    import socket

    from provisioning.testing import Slapd

    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    taken = holder.getsockname()[1]

    class Unlucky(Slapd):
        offered = [taken]

        def _avail_tcp_port(self):
            return self.offered.pop() if self.offered else super()._avail_tcp_port()

    server = Unlucky(rundir=str(tmp_path))
    try:
        assert server.port == taken
        server.start()
        assert server.port != taken and server.connect().whoami_s() == f"dn:{server.root_dn}"
        assert not Path(tmp_path, f"python-ldap-test-{taken}").exists()     # the failed try left no folder
    finally:
        server.stop()
        holder.close()


def test_a_test_failing_while_its_daemon_runs_shows_the_daemons_log(tmp_path, capsys):
    # A wait_until of the test's own timing out inside `with DaemonProcess(...)`: without the
    # daemon's log in the report, a failure seen once on CI cannot be read afterwards.
    from provisioning.testing.daemon import TAIL, DaemonProcess

    daemon = DaemonProcess(tmp_path / "daemon.conf", None, tmp_path)
    daemon.log_path.write_text("the start\n" + "x" * TAIL + "\ngateway: call jail job: look\n")
    daemon.__exit__(None, None, None)
    assert capsys.readouterr().out == ""
    daemon.__exit__(AssertionError, AssertionError("timed out"), None)
    shown = capsys.readouterr().out
    assert shown.endswith("gateway: call jail job: look\n\n") and "the start" not in shown
    assert str(daemon.log_path) in shown.splitlines()[0]

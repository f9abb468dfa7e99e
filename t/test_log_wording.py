"""What the log says about refreshes and stops, in the order things happen (issue 22, friction 7).

- the refresh is said done once its work has ended: after the progress lines and their totals;
- "initial" only for the first; after a reconnect the line says so;
- under --once nothing says "waiting for changes" before the daemon stops;
- a SIGTERM is named in the log ("SIGTERM received") before the daemon stops.
"""
from __future__ import annotations

import re

from provisioning.sandbox.slapd import ACCOUNTS_BASE, StoneySlapd

from helpers import DaemonProcess, Host
from test_progress import _fill

DONE = r"initial synchronisation of \S+ done"


def _index(lines: list[str], pattern: str) -> int:
    found = [n for n, line in enumerate(lines) if re.search(pattern, line)]
    assert found, pattern
    return found[-1]


def test_the_refresh_is_said_done_after_its_last_progress_line_and_once_waits_for_nothing(host, directory):
    _fill(directory, 300, 20)
    daemon = DaemonProcess(host, "--once", env={"PROVISIONING_PROGRESS_INTERVAL": "0.01"}).start(wait_ready=False)
    assert daemon.wait_exit(timeout=120) == 0, daemon.text()[-3000:]
    lines = daemon.text().splitlines()
    done = _index(lines, DONE)
    assert _index(lines, r"INFO synchronis(ing|ed) ") < done, "a progress line after the refresh was said done"
    assert lines[done].endswith(f"initial synchronisation of {host.subtree} done")
    assert not [line for line in lines if "waiting for changes" in line]
    assert done < _index(lines, r"stopping after the first refresh \(--once\)")


def test_a_sigterm_is_named_in_the_log(host, directory):
    daemon = DaemonProcess(host).start()
    assert re.search(rf"{DONE}; waiting for changes$", daemon.text(), re.M)
    assert daemon.stop() == 0
    lines = daemon.text().splitlines()
    assert _index(lines, r"INFO SIGTERM received: stopping after the work in hand$") < \
        _index(lines, r"stopped Backup/Rsnapshot provisioning daemon")


def test_after_a_reconnect_the_refresh_is_not_called_initial(tmp_path):
    server = StoneySlapd(rundir=str(tmp_path / "slapd"))
    server.start()
    try:
        host = Host(tmp_path / "host", server, ACCOUNTS_BASE)
        daemon = DaemonProcess(host).start()
        server.restart()
        daemon.wait_for(r"connected to ldap://", count=2)
        daemon.wait_for(rf"synchronisation of {re.escape(ACCOUNTS_BASE)} done after reconnecting; waiting for changes")
        assert daemon.text().count("initial synchronisation") == 1
        assert daemon.stop() == 0
    finally:
        server.stop()

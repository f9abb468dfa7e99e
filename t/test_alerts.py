"""Mail alerts from the running daemon: failed requests, removals that keep data, a directory that went away."""
from __future__ import annotations

from provisioning.sandbox.slapd import ACCOUNTS_BASE, StoneySlapd

from helpers import DaemonProcess, Directory, Host
from test_mail import Server, free_port

UID = "3723707"


def _mail_to(host: Host, server: Server, **extra) -> None:
    host.set_global("Mail", SENDTO="ops@example.org", HOST="127.0.0.1", PORT=server.port, SSL="none",
                    WANTINFOMAIL=0, **extra)


def test_a_failed_request_is_mailed_with_its_log_lines(host, directory):
    server = Server(free_port())
    try:
        _mail_to(host, server)
        host.fail_quota(6)
        daemon = DaemonProcess(host).start()
        dn = directory.add(UID)
        directory.wait_return_value(dn, 6)
        [mail] = server.wait(1)
        assert mail.kind == "failure" and mail.rcpt_tos == ["ops@example.org"]
        body = mail.body
        assert dn in body and "Return value: 6" in body and "add" in body
        assert "setting the quota failed" in body           # a log line of that request
        assert f"uid={UID}" in mail.message["Subject"]
        assert daemon.stop() == 0
    finally:
        server.stop()


def test_an_entry_removed_without_a_delete_request_is_mailed_once(host, directory):
    server = Server(free_port())
    try:
        _mail_to(host, server)
        daemon = DaemonProcess(host).start()
        dn = directory.add(UID)
        directory.wait_mode(dn, "added")
        directory.conn.delete_s(dn)
        [mail] = server.wait(1)
        assert mail.kind == "warning" and "its data is kept" in mail.body and dn in mail.body
        assert daemon.stop() == 0
        assert len(server.received) == 1
    finally:
        server.stop()


def test_a_directory_that_goes_away_is_mailed_once_per_outage(tmp_path):
    slapd = StoneySlapd(rundir=str(tmp_path / "slapd"))
    slapd.start()
    server = Server(free_port())
    try:
        host = Host(tmp_path / "host", slapd, ACCOUNTS_BASE)
        host.set_global("Operation Mode", ATTEMPTS=0, SLEEP=0.05)
        _mail_to(host, server)
        daemon = DaemonProcess(host).start()
        slapd.terminate()
        slapd.wait()
        daemon.wait_for(r"attempt 1 to reach LDAP failed")
        [mail] = server.wait(1)
        assert mail.kind == "warning" and "out of reach" in mail.message["Subject"]
        slapd.resume()
        daemon.wait_for(r"LDAP answers again")
        directory = Directory(slapd, ACCOUNTS_BASE, host.layout.backup_root)
        directory.wait_mode(directory.add(UID), "added")
        assert daemon.stop() == 0
        assert len(server.received) == 1                    # many attempts, one mail
    finally:
        server.stop()
        slapd.stop()

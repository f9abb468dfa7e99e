"""Mail alerts against real SMTP servers (aiosmtpd) on 127.0.0.1, started by the tests.

TLS uses a throwaway CA made here with the openssl command. Servers that are
down, or that accept the connection and never answer, are real sockets too.
"""
from __future__ import annotations

import base64
import hmac
import logging
import random
import socket
import ssl
import subprocess
import threading
import time
from dataclasses import dataclass
from email import message_from_bytes
from email.message import EmailMessage
from email.policy import default as default_policy
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from provisioning.config import loader as cfgmod
from provisioning.config.loader import ConfigError
from provisioning.base.log import STREAM_FORMAT, LevelFlags, install
from provisioning.alerts.mail import Alerts, RequestLog, alerts_from_config, describe_settings, mail_problems
from provisioning.alerts.mailer import MailSettings
from provisioning.base.secret import Secret

from helpers import wait_until

SENDTO = "ops@example.org, backup-team@example.org"
DN = "uid=3723707,ou=accounts,ou=backup,ou=services,dc=stoney-cloud,dc=org"
USER = "alerts@example.org"
PASSWORD = "c0rrect#horse;battery"


# ------------------------------------------------------------------ servers

@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    raw: bytes
    tls: bool

    @property
    def message(self) -> EmailMessage:
        return message_from_bytes(self.raw, policy=default_policy)

    @property
    def count(self) -> int:
        return int(self.message["X-Provisioning-Count"])

    @property
    def kind(self) -> str:
        return self.message["X-Provisioning-Kind"]

    @property
    def body(self) -> str:
        return self.message.get_content().replace("\r\n", "\n")


class Recorder:
    """aiosmtpd handler: keeps what arrives."""

    def __init__(self) -> None:
        self.received: list[Received] = []

    async def handle_DATA(self, server, session, envelope):
        tls = server.transport.get_extra_info("ssl_object") is not None
        self.received.append(Received(envelope.mail_from, list(envelope.rcpt_tos), envelope.original_content, tls))
        return "250 OK"


class Authenticator:
    """Accepts one login; records every attempt's mechanism and whether it was right."""

    def __init__(self, login: str = USER, password: str = PASSWORD) -> None:
        self.login, self.password = login, password
        self.attempts: list[tuple[str, bool]] = []

    def __call__(self, server, session, envelope, mechanism, auth_data):
        ok = (isinstance(auth_data, LoginPassword) and auth_data.login.decode() == self.login
              and auth_data.password.decode() == self.password)
        self.attempts.append((mechanism, ok))
        return AuthResult(success=ok, handled=False)


class Server:
    def __init__(self, port: int, recorder: Recorder | None = None, **smtp_options) -> None:
        self.port = port
        self.recorder = recorder or Recorder()
        self.controller = Controller(self.recorder, hostname="127.0.0.1", port=port, **smtp_options)
        self.controller.start()

    @property
    def received(self) -> list[Received]:
        return self.recorder.received

    def wait(self, count: int, what: str = "mail") -> list[Received]:
        wait_until(lambda: len(self.received) >= count, f"{count} {what}(s) at the SMTP server")
        return self.received

    def stop(self) -> None:
        self.controller.stop()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def servers():
    """Start SMTP servers; all are stopped at the end."""
    started: list[Server] = []

    def start(port: int | None = None, recorder: Recorder | None = None, **smtp_options) -> Server:
        server = Server(port or free_port(), recorder, **smtp_options)
        started.append(server)
        return server
    yield start
    for server in started:
        server.stop()


@pytest.fixture
def alerts_made():
    """Make Alerts; each is closed at the end so no thread outlives its test."""
    made: list[Alerts] = []

    def make(settings: dict, **options) -> Alerts:
        options = {"host": "backup01.example.org", "environment": "backup01", "service": "Backup/Rsnapshot",
                   "timeout": 5.0, **options}
        alerts = Alerts({"SENDTO": SENDTO, "HOST": "127.0.0.1", "SSL": "none", **settings}, **options)
        made.append(alerts)
        return alerts
    yield make
    for alerts in made:
        alerts.close(0.5)


@pytest.fixture(autouse=True)
def debug_logs(caplog):
    caplog.set_level(logging.DEBUG, logger="provisioning")


def ours(caplog) -> list[logging.LogRecord]:
    """Records of the daemon's own loggers (not aiosmtpd's)."""
    return [r for r in caplog.records if r.name.startswith("provisioning")]


def logged(caplog) -> str:
    return "\n".join(r.getMessage() for r in ours(caplog))


# ----------------------------------------------------------------- the CA

def _openssl(folder: Path, *args: str) -> None:
    subprocess.run(["openssl", *args], cwd=folder, check=True, capture_output=True)


def _ca(folder: Path, name: str) -> None:
    _openssl(folder, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", f"{name}.key", "-out", f"{name}.pem", "-days", "2", "-subj", f"/CN=Throwaway {name}",
             "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign")


def _server_cert(folder: Path, ca: str, name: str, san: str) -> None:
    _openssl(folder, "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}")
    (folder / f"{name}.ext").write_text(f"subjectAltName={san}\nbasicConstraints=CA:FALSE\n"
                                        "keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n")
    _openssl(folder, "x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key",
             "-set_serial", str(random.randrange(1, 2**63)), "-days", "2", "-extfile", f"{name}.ext",
             "-out", f"{name}.pem")


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> dict[str, Path]:
    """CA 1 with a certificate for 127.0.0.1 and one for another name; CA 2 with one for 127.0.0.1.

    Each CA also lies alone in a folder of its own, under its plain name (not
    under OpenSSL's hash name), as an operator would drop it there.
    """
    folder = tmp_path_factory.mktemp("pki")
    for ca in ("ca1", "ca2"):
        _ca(folder, ca)
        (folder / f"{ca}-dir").mkdir()
        (folder / f"{ca}-dir" / f"{ca}.pem").write_bytes((folder / f"{ca}.pem").read_bytes())
    _server_cert(folder, "ca1", "good", "IP:127.0.0.1,DNS:localhost")
    _server_cert(folder, "ca1", "othername", "DNS:mail.example.org")
    _server_cert(folder, "ca2", "stranger", "IP:127.0.0.1,DNS:localhost")
    return {name: folder / name for name in ("ca1.pem", "ca1-dir", "ca2-dir")} | {"root": folder}


def server_tls(pki, name: str) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(pki["root"] / f"{name}.pem", pki["root"] / f"{name}.key")
    return context


# ------------------------------------------------------------ the failure mail

def test_a_failure_mail_has_every_field_and_the_request_log_lines(servers, alerts_made, caplog):
    server = servers()
    request_log = RequestLog()
    install(request_log, STREAM_FORMAT, LevelFlags(debug=True))
    try:
        alerts = alerts_made({"PORT": server.port, "FROMNAME": "Backup daemon", "USERNAME": ""})
        app = logging.getLogger("provisioning.test")
        app.info("before the request: not part of it")
        with request_log.capture() as lines:
            app.info("%s: add requested (sstProvisioningMode: add)", DN)
            app.error("%s: setquota: Not all specified mountpoints are using quota", DN)
        app.info("after the request: not part of it")
        started = time.monotonic()
        alerts.failed(DN, "add", 6, "CANNOT_SET_QUOTA: SET_QUOTA_CMD exited non-zero", lines)
        assert time.monotonic() - started < 0.1
        mail = server.wait(1)[0]
    finally:
        logging.getLogger().removeHandler(request_log)

    assert mail.rcpt_tos == ["ops@example.org", "backup-team@example.org"]
    message = mail.message
    assert message["Subject"] == (f"[Provisioning] Backup/Rsnapshot on backup01: add failed with return "
                                  f"value 6: {DN}")
    assert message["From"] == "Backup daemon <provisioning@backup01.example.org>"
    assert message["To"] == "ops@example.org, backup-team@example.org"
    assert message["Auto-Submitted"] == "auto-generated"
    assert (mail.kind, mail.count) == ("failure", 1)
    body = mail.body
    for field in ("Host:         backup01.example.org", "Environment:  backup01", "Service:      Backup/Rsnapshot",
                  f"DN:           {DN}", "Request:      add",
                  "Return value: 6 (CANNOT_SET_QUOTA: SET_QUOTA_CMD exited non-zero)"):
        assert f"\n{field}\n" in body, field
    log_part = body.split("Log lines of this request:\n", 1)[1]
    assert [line.strip().split(" ", 3)[2:] for line in log_part.strip("\n").split("\n")] == [
        ["INFO", f"{DN}: add requested (sstProvisioningMode: add)"],
        ["ERROR", f"{DN}: setquota: Not all specified mountpoints are using quota"]]
    assert "not part of it" not in body
    wait_until(lambda: "mail alert sent through 127.0.0.1" in logged(caplog), "the log line of the sent mail")


def test_the_sender_comes_from_fromname_or_username(servers, alerts_made):
    server = servers()
    alerts_made({"PORT": server.port, "FROMNAME": "Backups <backups@example.net>"}).warning("one", "text")
    mail = server.wait(1)[0]
    assert mail.message["From"] == "Backups <backups@example.net>" and mail.mail_from == "backups@example.net"
    settings = MailSettings.from_section({"FROMNAME": "Backups", "USERNAME": USER})
    assert str(settings.sender("h")) == f"Backups <{USER}>"      # the original: FROMNAME<USERNAME>


# ----------------------------------------------------------------- storms

def test_a_storm_of_200_failures_is_one_mail_and_one_digest_that_counts_all(servers, alerts_made, caplog):
    server = servers()
    alerts = alerts_made({"PORT": server.port}, window=60.0)
    started = time.monotonic()
    for n in range(200):
        verb, code, meaning = (("add", 6, "CANNOT_SET_QUOTA") if n % 4 else ("delete", 9, "CANNOT_ARCHIVE"))
        alerts.failed(f"uid={4000000 + n},ou=accounts", verb, code, meaning, [f"line of request {n}"])
    took = time.monotonic() - started
    server.wait(1)
    alerts.close(10)                    # the window is still open: close mails its digest
    mails = server.received
    assert took < 1.0, f"200 calls took {took:.2f} s"

    assert [m.kind for m in mails] == ["failure", "failure-digest"]
    assert sum(m.count for m in mails) == 200
    first, digest = mails
    assert "uid=4000000,ou=accounts" in first.message["Subject"]       # the first, on its own
    assert "digest: 199 failed requests" in digest.message["Subject"]
    body = digest.body
    assert "     150  add, return value 6 (CANNOT_SET_QUOTA)\n" in body
    assert "      49  delete, return value 9 (CANNOT_ARCHIVE)\n" in body
    assert "The first 20:\n  uid=4000001,ou=accounts  (add, return value 6 (CANNOT_SET_QUOTA))\n" in body
    assert "uid=4000020,ou=accounts" in body and "uid=4000021,ou=accounts" not in body
    assert "  ... and 179 more, not listed\n" in body
    assert "  line of request 1\n" in body and "  line of request 3\n" in body   # details of the first 3
    assert "  line of request 4\n" not in body
    assert "mail alerts lost" not in logged(caplog)


@pytest.mark.parametrize("background", [True, False])
def test_the_digest_at_the_stop_is_sent_however_long_the_host_is_up(servers, alerts_made, caplog, background):
    # The Alerts clock is monotonic: days of uptime are far past the 6 hours after
    # which a kept mail is given up. A digest queued at the stop is new all the same.
    server = servers()
    alerts = alerts_made({"PORT": server.port}, clock=lambda: 7 * 86400.0, window=60.0, background=background)
    for n in range(3):
        alerts.failed(f"uid={4000000 + n},ou=accounts", "add", 6, "CANNOT_SET_QUOTA", [])
    if not background:
        alerts.flush()
    server.wait(1)
    alerts.close(10)
    assert [m.kind for m in server.received] == ["failure", "failure-digest"]
    assert "mail alerts lost" not in logged(caplog)


def test_a_continuing_storm_sends_one_digest_per_window_and_a_quiet_time_resets(servers, alerts_made):
    server = servers()
    now = [1000.0]
    alerts = alerts_made({"PORT": server.port}, clock=lambda: now[0], window=10.0, background=False)

    def at(moment: float, count: int) -> None:
        now[0] = moment
        for n in range(count):
            alerts.failed(f"uid={int(moment)}{n}", "modify", 7, "", [])
        alerts.flush()

    at(1000, 5)            # first at once, 4 into the window [1000, 1010)
    at(1005, 3)            # 3 more into it
    at(1010.5, 6)          # the window ended: its digest (7); these 6 open the next window's digest
    at(1021, 0)            # that window ended: digest of 6; a new window opens, empty
    at(1032, 0)            # quiet: the window closes
    at(1040, 2)            # after the quiet time: the first at once again, 1 digested
    alerts.close(5)
    kinds = [(m.kind, m.count) for m in server.received]
    assert kinds == [("failure", 1), ("failure-digest", 7), ("failure-digest", 6), ("failure", 1),
                     ("failure-digest", 1)]
    assert sum(count for _, count in kinds) == 5 + 3 + 6 + 2


def test_a_digest_goes_out_by_itself_when_its_window_ends(servers, alerts_made):
    server = servers()
    alerts = alerts_made({"PORT": server.port}, window=0.5)
    for n in range(3):
        alerts.failed(f"uid={n}", "add", 5, "CANNOT_CREATE_HOME_DIR", [])
    mails = server.wait(2)
    assert [(m.kind, m.count) for m in mails] == [("failure", 1), ("failure-digest", 2)]


def test_info_mails_only_with_wantinfomail_and_digested_under_load(servers, alerts_made):
    server = servers()
    quiet = alerts_made({"PORT": server.port, "WANTINFOMAIL": False})
    quiet.done(DN, "add", ["done line"])
    quiet.failed(DN, "modify", 7, "CANNOT_CREATE_RSNAPSHOT_CONFIGURATION", [])
    quiet.close(5)
    assert [m.kind for m in server.wait(1)] == ["failure"]      # the failure came, no info mail

    chatty = alerts_made({"PORT": server.port, "WANTINFOMAIL": True}, window=60.0)
    chatty.done(DN, "add", [f"{DN}: add done in 0.120 s"])
    first = server.wait(2)[1]
    assert first.kind == "done" and first.message["Subject"].endswith(f": add done: {DN}")
    assert f"{DN}: add done in 0.120 s" in first.body
    for n in range(50):
        chatty.done(f"uid={n}", "modify", [])
    chatty.close(5)
    digest = server.wait(3)[2]
    assert (digest.kind, digest.count) == ("done-digest", 50)
    assert "      50  modify done\n" in digest.body


# ---------------------------------------------------------------------- TLS

@pytest.mark.parametrize("ca", ["ca1-dir", "ca1.pem"])
def test_starttls_verifies_the_server_against_ca_dir(servers, alerts_made, pki, ca):
    server = servers(tls_context=server_tls(pki, "good"), require_starttls=True)
    alerts_made({"PORT": server.port, "SSL": "starttls", "CA_DIR": str(pki[ca])}).warning("tls", "over TLS")
    mail = server.wait(1)[0]
    assert mail.tls and mail.kind == "warning"


def test_smtps_verifies_the_server_too(servers, alerts_made, pki):
    server = servers(ssl_context=server_tls(pki, "good"))
    alerts_made({"PORT": server.port, "SSL": "ssl", "CA_DIR": str(pki["ca1-dir"])}).warning("tls", "smtps")
    assert server.wait(1)[0].tls


def test_a_certificate_from_another_ca_is_refused_and_the_mail_kept(servers, alerts_made, pki, caplog):
    server = servers(tls_context=server_tls(pki, "stranger"), require_starttls=True,
                     authenticator=(auth := Authenticator()), auth_required=True)
    settings = {"PORT": server.port, "SSL": "starttls", "CA_DIR": str(pki["ca1-dir"]), "USERNAME": USER,
                "PASSWORD": Secret(PASSWORD)}
    alerts = alerts_made(settings, retry=0.2)
    alerts.failed(DN, "add", 6, "CANNOT_SET_QUOTA", [])
    wait_until(lambda: logged(caplog).count("TLS certificate refused") >= 2, "two refused attempts")
    assert server.received == [] and auth.attempts == []         # no password went to it
    alerts.update({**settings, "SENDTO": SENDTO, "HOST": "127.0.0.1",
                   "CA_DIR": str(pki["ca2-dir"])})              # the operator trusts it: SIGHUP
    mail = server.wait(1)[0]
    assert mail.kind == "failure" and DN in mail.message["Subject"]


@pytest.mark.parametrize("host, why", [("127.0.0.1", "IP address mismatch, certificate is not valid for "
                                                    "'127.0.0.1'"),
                                       ("localhost", "Hostname mismatch, certificate is not valid for 'localhost'")])
def test_a_certificate_for_another_name_is_refused(servers, alerts_made, pki, caplog, host, why):
    """Signed by the trusted CA, but for mail.example.org: refused all the same."""
    server = servers(tls_context=server_tls(pki, "othername"), require_starttls=True)
    alerts_made({"HOST": host, "PORT": server.port, "SSL": "starttls",
                 "CA_DIR": str(pki["ca1-dir"])}).warning("x", "y")
    wait_until(lambda: "TLS certificate refused" in logged(caplog), "the refusal")
    assert f"TLS certificate refused: {why}; 1 kept" in logged(caplog) and server.received == []


def test_starttls_is_never_skipped_when_the_server_does_not_offer_it(servers, alerts_made, caplog):
    """A server (or a man in the middle) without STARTTLS gets neither the password nor the mail."""
    server = servers(authenticator=(auth := Authenticator()), auth_require_tls=False)
    alerts_made({"PORT": server.port, "SSL": "starttls", "CA_DIR": "", "USERNAME": USER,
                 "PASSWORD": Secret(PASSWORD)}).failed(DN, "add", 6, "", [])
    wait_until(lambda: "STARTTLS extension not supported" in logged(caplog), "the refusal")
    assert auth.attempts == [] and server.received == []


# --------------------------------------------------------------------- AUTH

@pytest.mark.parametrize("method", ["LOGIN", "PLAIN"])
def test_authentication_uses_the_configured_method(servers, alerts_made, pki, method):
    server = servers(tls_context=server_tls(pki, "good"), require_starttls=True,
                     authenticator=(auth := Authenticator()), auth_required=True)
    alerts_made({"PORT": server.port, "SSL": "starttls", "CA_DIR": str(pki["ca1-dir"]), "USERNAME": USER,
                 "PASSWORD": Secret(PASSWORD), "AUTH_METHOD": method.lower()}).warning("auth", "text")
    mail = server.wait(1)[0]
    assert auth.attempts == [(method, True)]
    assert mail.mail_from == USER                       # the original sends as USERNAME


class CramMd5Recorder(Recorder):
    """Offers CRAM-MD5 (aiosmtpd has LOGIN and PLAIN only), checking the answer with the password."""

    challenge = b"<1896.697170952@mail.example.org>"

    def __init__(self) -> None:
        super().__init__()
        self.attempts: list[tuple[str, bool]] = []

    async def auth_CRAM__MD5(self, server, args):
        answer = await server.challenge_auth(self.challenge)
        user, _, digest = answer.partition(b" ")
        expected = hmac.new(PASSWORD.encode(), self.challenge, "md5").hexdigest().encode()
        ok = user == USER.encode() and hmac.compare_digest(digest, expected)
        self.attempts.append(("CRAM-MD5", ok))
        return AuthResult(success=ok, handled=False)


def test_cram_md5_answers_the_challenge(servers, alerts_made, pki):
    server = servers(recorder=(recorder := CramMd5Recorder()), tls_context=server_tls(pki, "good"),
                     require_starttls=True, authenticator=Authenticator(), auth_required=True)
    alerts_made({"PORT": server.port, "SSL": "starttls", "CA_DIR": str(pki["ca1-dir"]), "USERNAME": USER,
                 "PASSWORD": Secret(PASSWORD), "AUTH_METHOD": "CRAM-MD5"}).warning("auth", "text")
    server.wait(1)
    assert recorder.attempts == [("CRAM-MD5", True)]


def test_a_method_the_server_does_not_offer_is_named(servers, alerts_made, pki, caplog):
    server = servers(tls_context=server_tls(pki, "good"), require_starttls=True,
                     authenticator=Authenticator(), auth_required=True)
    alerts_made({"PORT": server.port, "SSL": "starttls", "CA_DIR": str(pki["ca1-dir"]), "USERNAME": USER,
                 "PASSWORD": Secret(PASSWORD), "AUTH_METHOD": "CRAM-MD5"}).warning("auth", "text")
    wait_until(lambda: "does not offer AUTH CRAM-MD5" in logged(caplog), "the refusal")
    assert "it offers LOGIN PLAIN" in logged(caplog)


def test_a_wrong_password_is_logged_kept_retried_and_never_shown(servers, alerts_made, pki, caplog):
    caplog.set_level(logging.DEBUG)
    wrong = "wr0ng#pass;word"
    auth = Authenticator()
    server = servers(tls_context=server_tls(pki, "good"), require_starttls=True, authenticator=auth,
                     auth_required=True)
    alerts = alerts_made({"PORT": server.port, "SSL": "starttls", "CA_DIR": str(pki["ca1-dir"]),
                          "USERNAME": USER, "PASSWORD": Secret(wrong), "AUTH_METHOD": "PLAIN"}, retry=0.2)
    alerts.failed(DN, "add", 6, "CANNOT_SET_QUOTA", [])
    wait_until(lambda: len(auth.attempts) >= 2, "a retry after the refused login")
    assert all(not ok for _, ok in auth.attempts) and server.received == []
    assert "cannot send mail alerts through 127.0.0.1" in logged(caplog) and " 535 " in logged(caplog)
    auth.password = wrong                      # the mail server's side is fixed: the next retry gets through
    mail = server.wait(1)[0]
    assert mail.kind == "failure"
    wait_until(lambda: "takes mail alerts again: 1 sent" in logged(caplog), "the log of the recovery")
    secrets = [wrong, base64.b64encode(wrong.encode()).decode(),
               base64.b64encode(f"\0{USER}\0{wrong}".encode()).decode()]
    shown = "\n".join([logged(caplog), *(str(r.args) for r in ours(caplog)),
                       describe_settings(alerts.settings), repr(alerts.settings), mail.raw.decode()])
    for secret in secrets:
        assert secret not in shown


# --------------------------------------------------------- the server away

def test_with_the_server_down_nothing_blocks_and_the_mail_goes_once_it_is_back(servers, alerts_made, caplog):
    port = free_port()                          # nothing listens there
    alerts = alerts_made({"PORT": port}, retry=0.2, retry_max=0.4)
    started = time.monotonic()
    alerts.failed(DN, "add", 6, "CANNOT_SET_QUOTA", [])
    alerts.warning("store folder full", "the store cannot be written")
    assert time.monotonic() - started < 0.1
    wait_until(lambda: "kept, trying again" in logged(caplog), "a failed attempt")
    wait_until(lambda: logged(caplog).count("kept, trying again") >= 2, "a second failed attempt")
    server = servers(port)
    server.wait(2)
    alerts.close(5)                             # would send anything still kept: nothing is sent twice
    assert sorted(m.kind for m in server.received) == ["failure", "warning"]
    assert "takes mail alerts again: 2 sent" in logged(caplog)


@pytest.fixture
def silent_server():
    """Accepts TCP connections and never says a word."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    listener.settimeout(0.1)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                accepted.append(listener.accept()[0])
            except socket.timeout:
                pass
    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield listener.getsockname()[1], accepted
    stop.set()
    thread.join(2)
    for conn in accepted:
        conn.close()
    listener.close()


def test_a_server_that_never_answers_never_delays_the_caller(silent_server, alerts_made, caplog):
    port, accepted = silent_server
    alerts = alerts_made({"PORT": port}, timeout=30.0, window=60.0)
    alerts.failed(DN, "add", 6, "CANNOT_SET_QUOTA", [])
    wait_until(lambda: accepted, "the sender to connect")        # the sender now waits for a greeting
    started = time.monotonic()
    for n in range(200):
        alerts.failed(f"uid={n}", "add", 6, "CANNOT_SET_QUOTA", [])
        alerts.done(f"uid={n}", "add", [])
        alerts.warning("warning", "text", f"uid={n}")
    took = time.monotonic() - started
    assert took < 0.5, f"600 calls took {took:.2f} s while the server hung"
    started = time.monotonic()
    alerts.close(0.5)
    assert time.monotonic() - started < 2.0
    lost = [r.getMessage() for r in ours(caplog) if "mail alerts lost" in r.getMessage()]
    assert len(lost) == 1
    # 1 failure mail + digests of 199 failures, 200 done, 200 warnings, with the
    # first of each kind: 6 mails reporting all 601 events.
    assert "at the stop: not sent within 0.5 s (the SMTP server had not answered yet): 6 mail(s) " \
           "reporting 601 event(s)" in lost[0]
    assert f"add failed with return value 6: {DN}" in lost[0]


def test_mail_kept_too_long_or_too_much_is_given_up_and_the_loss_logged(alerts_made, caplog):
    now = [0.0]
    alerts = alerts_made({"PORT": free_port()}, clock=lambda: now[0], window=5.0, background=False,
                         max_kept=3, give_up_after=100.0, timeout=1.0)
    for moment in (0, 10, 20, 30):                # each after a quiet time: four mails
        now[0] = moment
        alerts.failed(f"uid={moment}", "add", 6, "", [])
    first_loss = [r.getMessage() for r in ours(caplog) if "mail alerts lost" in r.getMessage()]
    assert len(first_loss) == 1 and "more than 3 mails were waiting: 1 mail(s) reporting 1 event(s)" in \
        first_loss[0] and "uid=0" in first_loss[0]
    alerts.flush()                                # server down: kept
    now[0] = 125.0                                # uid=10 and uid=20 have waited more than 100 s
    alerts.flush()
    lost = [r.getMessage() for r in ours(caplog) if "mail alerts lost" in r.getMessage()]
    assert len(lost) == 2 and "after 100 s of trying: 2 mail(s) reporting 2 event(s)" in lost[1]
    assert "uid=10" in lost[1] and "uid=20" in lost[1] and "uid=30" not in lost[1]


def test_a_mail_the_server_refuses_for_good_is_logged_not_retried(servers, alerts_made, caplog):
    class Refusing(Recorder):
        async def handle_RCPT(self, server, session, envelope, address, options):
            return "550 5.1.1 no such mailbox"
    server = servers(recorder=Refusing())
    alerts = alerts_made({"PORT": server.port}, retry=0.1)
    alerts.failed(DN, "add", 6, "", [])
    wait_until(lambda: "refused by 127.0.0.1" in logged(caplog), "the refusal")
    alerts.close(2)
    assert "550" in logged(caplog) and "mail alerts lost" not in logged(caplog)
    assert logged(caplog).count("refused by 127.0.0.1") == 1


# ---------------------------------------------------------- hostile values

def test_a_hostile_dn_cannot_add_headers_or_forge_body_lines(servers, alerts_made):
    server = servers()
    alerts = alerts_made({"PORT": server.port})
    hostile = ("uid=1\r\nBcc: victim@evil.example\r\nX-Injected: yes\r\n\r\nReturn value: 0,"
               "ou=accounts\u2028Subject: forged\x1b[31m")
    alerts.failed(hostile, "add\nBcc: victim2@evil.example", 6, "meaning\r\nX-Injected: 2",
                  ["line one\nReturn value: 0", "2026 INFO plain line"])
    alerts.warning("subject\r\nBcc: victim3@evil.example", "text\nwith lines", hostile)
    mails = server.wait(2)
    for mail in mails:
        message = mail.message
        assert mail.rcpt_tos == ["ops@example.org", "backup-team@example.org"]
        assert message.get_all("Bcc") is None and message.get_all("X-Injected") is None
        assert len(message.get_all("Subject")) == 1 and "\n" not in message["Subject"]
        assert "\r" not in mail.raw.decode().replace("\r\n", "")
        assert "\x1b" not in mail.raw.decode() and "\u2028" not in mail.body
    failure = mails[0]
    assert "uid=1\\r\\nBcc: victim@evil.example\\r\\nX-Injected: yes" in failure.message["Subject"]
    body_lines = failure.body.split("\n")
    assert [line for line in body_lines if line.startswith("Return value:")] == \
        ["Return value: 6 (meaning\\r\\nX-Injected: 2)"]
    assert "  line one\\nReturn value: 0" in body_lines
    assert not any(line.startswith(("Bcc", "X-Injected", "Subject")) for line in body_lines)
    assert "text\nwith lines" in mails[1].body          # a warning's own text keeps its lines


def test_non_ascii_values_arrive_intact(servers, alerts_made):
    server = servers()
    dn = "cn=Zürich Straße 5,ou=accounts,dc=example,dc=org"
    alerts_made({"PORT": server.port, "FROMNAME": "Sicherungsdämon"}).failed(
        dn, "add", 6, "Kontingent nicht gesetzt", [f"{dn}: ÄÖÜ"])
    mail = server.wait(1)[0]
    assert mail.raw.isascii()                                 # no 8BITMIME needed anywhere
    assert mail.message["Subject"].endswith(f": {dn}")
    assert mail.message["From"].addresses[0].display_name == "Sicherungsdämon"
    assert f"DN:           {dn}\n" in mail.body and f"  {dn}: ÄÖÜ\n" in mail.body


def test_a_bad_call_is_logged_and_never_raises(alerts_made, caplog):
    alerts = alerts_made({"PORT": free_port()})
    alerts.failed(DN, "add", "not a number", "", [])           # a caller's bug must not end its request
    assert "cannot queue a mail alert" in logged(caplog)


def test_a_long_dn_gives_a_bounded_subject(servers, alerts_made):
    server = servers()
    alerts_made({"PORT": server.port}).failed("uid=1," + "ou=x," * 20000 + "dc=org", "add", 6, "", [])
    mail = server.wait(1)[0]
    assert len(mail.message["Subject"]) <= 200 and mail.message["Subject"].endswith("...")
    assert mail.body.count("ou=x,") == 20000               # the body has it whole


# --------------------------------------------------------------- RequestLog

def test_request_log_keeps_each_threads_lines_apart():
    request_log = RequestLog()
    logging.getLogger().addHandler(request_log)
    app = logging.getLogger("provisioning.test")
    results: dict[int, list[str]] = {}
    barrier = threading.Barrier(4)

    def work(n: int) -> None:
        with request_log.capture() as lines:
            barrier.wait()                      # all four capture at the same time
            for step in range(50):
                app.warning("request %d step %d", n, step)
        results[n] = [line.rsplit(" ", 4)[1:] for line in lines]
    try:
        threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
        for thread in threads:
            thread.start()
        app.warning("the main thread, outside any request")
        for thread in threads:
            thread.join(10)
    finally:
        logging.getLogger().removeHandler(request_log)
    for n in range(4):
        assert results[n] == [["request", str(n), "step", str(step)] for step in range(50)]


def test_request_log_is_bounded_and_one_line_per_record():
    request_log = RequestLog(max_lines=10, head=3, max_chars=50)
    logging.getLogger().addHandler(request_log)
    app = logging.getLogger("provisioning.test")
    try:
        with request_log.capture() as lines:
            for n in range(25):
                app.warning("line %d%s", n, "\nforged" if n == 0 else "")
            app.warning("x" * 500)
    finally:
        logging.getLogger().removeHandler(request_log)
    assert len(lines) == 10 and lines.omitted == 17                 # 26 records: 9 shown, 17 left out
    assert lines[0].endswith("WARNING line 0\\nforged")             # one record, one line
    assert [line.rsplit(" ", 1)[1] for line in lines[1:3]] == ["1", "2"]
    assert lines[3] == "[... 17 line(s) left out ...]"
    assert [line.rsplit(" ", 1)[1] for line in lines[4:9]] == ["20", "21", "22", "23", "24"]
    kept, cut = lines[9].split("... (")
    assert len(kept) == 50 and kept.endswith("x") and cut.endswith(" more characters)")


# ------------------------------------------------------------ configuration

def _config(tmp_path, mail: str, environment: str = "backup01"):
    service = tmp_path / "Service.conf"
    service.write_text(f"""[Global]
ENVIRONMENT = {environment}
[Database]
BACKEND = LDAP
SERVER = ldap://ldap.example.org
ADMIN_USER = cn=Manager,dc=x
ADMIN_PASSWORD = secret
SERVICE_SUBTREE = ou=accounts,dc=x
COOKIE_FILE = {tmp_path}/cookie
[Service]
MODUS = selfcare
TRANSPORTAPI = LocalCLI
SERVICE = Backup
TYPE = Rsnapshot
""")
    glob = tmp_path / "Global.conf"
    glob.write_text("[Mail]\n" + mail)
    return cfgmod.load(service, glob)


def test_no_sendto_means_no_alerts(tmp_path):
    assert alerts_from_config(_config(tmp_path, "SENDTO =\nHOST = mail.example.org\n"), host="h") is None


def test_alerts_from_config_take_environment_and_service(tmp_path, servers):
    server = servers()
    alerts = alerts_from_config(_config(tmp_path, f"SENDTO = {SENDTO}\nHOST = 127.0.0.1\nPORT = {server.port}\n"
                                                  "SSL = none\n"), host="backup01.example.org")
    try:
        assert alerts.origin.service == "Backup/Rsnapshot" and alerts.origin.environment == "backup01"
        alerts.warning("hello", "text")
        assert "on backup01: warning: hello" in server.wait(1)[0].message["Subject"]
    finally:
        alerts.close(1)


def test_every_mail_problem_is_named_at_once(tmp_path):
    conf = _config(tmp_path, "SENDTO = ops@example.org, not-an-address, a@b@\nHOST =\nUSERNAME = me\n"
                             "AUTH_METHOD = XOAUTH\nCA_DIR = /nonexistent/ca-folder\n")
    problems = mail_problems(conf)
    where = f"{tmp_path}/Global.conf: [Mail] "
    assert all(p.startswith(where) for p in problems)
    keys = sorted(p[len(where):].split(":")[0] for p in problems)
    assert keys == ["AUTH_METHOD", "CA_DIR", "HOST", "PASSWORD", "SENDTO", "SENDTO"], problems
    with pytest.raises(ConfigError) as err:
        alerts_from_config(conf, host="h")
    assert err.value.problems == problems


def test_a_password_problem_never_shows_the_password(tmp_path):
    conf = _config(tmp_path, "SENDTO = ops@example.org\nHOST = mail\nUSERNAME = me\nPASSWORD = pässwort-42\n")
    problems = mail_problems(conf)
    assert len(problems) == 1 and "PASSWORD: only ASCII" in problems[0]
    assert "pässwort" not in " ".join(problems)
    settings = MailSettings.from_section(conf.global_["Mail"])
    assert "pässwort" not in describe_settings(settings) + repr(settings) + str(settings)

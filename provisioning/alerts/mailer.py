"""The SMTP side of mail alerts: [Mail] settings, TLS, AUTH and sending (smtplib).

Only the sending thread of provisioning.alerts.mail uses this: nothing here is ever
called by the code that works requests, so a slow or dead server costs that
thread its time, never the daemon's.

- SSL = starttls: plain connection, STARTTLS, then everything else. A server
  that does not offer STARTTLS gets nothing: no AUTH, no mail (never a silent
  downgrade). ssl: TLS from the first byte (SMTPS, usually port 465).
  none: no TLS at all.
- The server's certificate is verified against CA_DIR (a folder of CA
  certificates, as in the original, or one file; empty: the system's CAs) and
  must name HOST (hostname or IP address checked).
- AUTH only when USERNAME is set, with exactly AUTH_METHOD (LOGIN, PLAIN or
  CRAM-MD5): smtplib's own login() would pick a method itself, so the
  configured one is forced through SMTP.auth(). A server that does not offer
  it is an error that names what it offers. The password is a Secret,
  revealed only into the AUTH exchange.
"""
from __future__ import annotations

import os
import smtplib
import socket
import ssl
from dataclasses import dataclass, field
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import parseaddr
from pathlib import Path
from typing import Any, Mapping

from provisioning.base.log import escape
from provisioning.base.secret import Secret

SSL_MODES = ("starttls", "ssl", "none")
# AUTH_METHOD -> smtplib's object that answers the server's challenges.
AUTH_OBJECTS = {"LOGIN": "auth_login", "PLAIN": "auth_plain", "CRAM-MD5": "auth_cram_md5"}
CERT_SUFFIXES = (".pem", ".crt", ".cer")


class MailError(Exception):
    """Nothing could be sent now (server away, TLS refused, AUTH refused): keep and retry."""


class Rejected(Exception):
    """The server refused this one message for good (a 5xx answer): retrying cannot help."""


@dataclass(frozen=True)
class MailSettings:
    """[Mail] of Global.conf, as validated by the configspec."""

    sendto: tuple[str, ...] = ()
    host: str = ""
    port: int = 587
    username: str = ""
    password: Secret = field(default_factory=lambda: Secret(""))
    fromname: str = "Provisioning daemon"
    ca_dir: str = "/etc/ssl/certs"
    ssl: str = "starttls"
    auth_method: str = "LOGIN"
    wantinfomail: bool = True

    @classmethod
    def from_section(cls, section: Mapping[str, Any]) -> "MailSettings":
        """From the validated [Mail] section (a dict or a configobj section; missing keys: defaults)."""
        d = cls()
        get = section.get
        return cls(sendto=tuple(split_addresses(get("SENDTO", ""))),
                   host=str(get("HOST", d.host)).strip(),
                   port=int(get("PORT", d.port)),
                   username=str(get("USERNAME", d.username)).strip(),
                   password=Secret(get("PASSWORD", d.password)),
                   fromname=str(get("FROMNAME", d.fromname)).strip(),
                   ca_dir=str(get("CA_DIR", d.ca_dir)).strip(),
                   ssl=str(get("SSL", d.ssl)).strip().lower(),
                   auth_method=(str(get("AUTH_METHOD", "")).strip() or d.auth_method).upper(),
                   wantinfomail=bool(get("WANTINFOMAIL", d.wantinfomail)))

    def problems(self) -> list[str]:
        """What makes these settings unusable, as "KEY: why" (empty: usable, or mail is off)."""
        if not self.sendto:
            return []
        found = [f"SENDTO: {why}" for why in map(address_problem, self.sendto) if why]
        if not self.host:
            found.append("HOST: missing (required when SENDTO is set)")
        if self.ssl not in SSL_MODES:
            found.append(f'SSL: "{self.ssl}" is not one of {", ".join(SSL_MODES)}')
        if self.auth_method not in AUTH_OBJECTS:
            found.append(f'AUTH_METHOD: "{escape(self.auth_method)}" is not one of {", ".join(AUTH_OBJECTS)}')
        if self.username and not self.password:
            found.append("PASSWORD: missing (USERNAME is set)")
        if self.password and not self.username:
            found.append("USERNAME: missing (PASSWORD is set)")
        # smtplib sends AUTH answers as ASCII; say so now rather than at the first alert.
        if not self.username.isascii():
            found.append("USERNAME: only ASCII characters can be sent in SMTP AUTH")
        if not self.password.reveal().isascii():
            found.append("PASSWORD: only ASCII characters can be sent in SMTP AUTH")
        if self.ssl != "none" and self.ca_dir and not os.path.exists(self.ca_dir):
            found.append(f"CA_DIR: {escape(self.ca_dir)} does not exist")
        return found

    @property
    def server(self) -> str:
        return f"{self.host}:{self.port}"

    def sender(self, host: str) -> Address:
        """From: FROMNAME <address>. The address: one in FROMNAME ("Name <a@b>"), else
        USERNAME when it is an address (as the original), else provisioning@HOST."""
        name, addr = parseaddr(self.fromname)
        if "<" in self.fromname and addr and not address_problem(addr):
            return Address(display_name=escape(name), addr_spec=addr)
        if self.username and not address_problem(self.username):
            return Address(display_name=escape(self.fromname), addr_spec=self.username)
        return Address(display_name=escape(self.fromname), addr_spec=f"provisioning@{safe_hostname(host)}")


def split_addresses(text: Any) -> list[str]:
    """SENDTO: one or more addresses, separated by commas or blanks."""
    return [part for part in str(text or "").replace(",", " ").split() if part]


def address_problem(addr: str) -> str | None:
    """Why ``addr`` is not a plain ASCII mail address (local@domain), or None."""
    shown = escape(addr)
    if not addr.isascii() or not addr.isprintable() or any(c in addr for c in ' <>(),;:"\\'):
        return f'"{shown}" is not a plain mail address (ASCII, no blanks, quotes or brackets)'
    local, at, domain = addr.rpartition("@")
    if not at or not local or not domain or "." in (domain[0], domain[-1]) or ".." in domain:
        return f'"{shown}" is not a mail address (local@domain)'
    try:
        Address(addr_spec=addr)
    except (ValueError, IndexError):
        return f'"{shown}" is not a mail address'
    return None


def safe_hostname(host: str) -> str:
    """``host`` if it is a plain host name, else "localhost" (it goes into headers and EHLO)."""
    name = host.strip().rstrip(".")
    ok = name and len(name) < 254 and all(c.isascii() and (c.isalnum() or c in ".-") for c in name)
    return name if ok else "localhost"


def tls_context(ca_dir: str) -> ssl.SSLContext:
    """Verify the server against CA_DIR (folder or file; empty: the system's CAs), host name checked."""
    if not ca_dir:
        return ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    # Only the CAs of CA_DIR, not the system's: CERT_REQUIRED and
    # check_hostname are PROTOCOL_TLS_CLIENT's defaults.
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    path = Path(ca_dir)
    if not path.is_dir():
        context.load_verify_locations(cafile=str(path))
        return context
    # OpenSSL's capath finds only certificates under their hash names
    # (c_rehash); a folder someone dropped ca.pem into is read file by file.
    context.load_verify_locations(capath=str(path))
    for item in sorted(path.iterdir()):
        if item.suffix.lower() in CERT_SUFFIXES and item.is_file():
            try:
                context.load_verify_locations(cafile=str(item))
            except (ssl.SSLError, OSError):
                pass                  # not a certificate, or unreadable: OpenSSL may find it by hash
    return context


class Mailer:
    """One SMTP session at a time: open (TLS, AUTH), send messages, close."""

    def __init__(self, settings: MailSettings, *, local_hostname: str) -> None:
        self.settings = settings
        # Given, not looked up: smtplib would ask DNS for the FQDN otherwise.
        self.local_hostname = safe_hostname(local_hostname)
        self._context: ssl.SSLContext | None = None

    def context(self) -> ssl.SSLContext:
        """The TLS context, built once (reading a CA folder file by file takes a while)."""
        if self._context is None:
            self._context = tls_context(self.settings.ca_dir)
        return self._context

    def open(self, timeout: float) -> smtplib.SMTP:
        """A connected session, TLS and AUTH done as configured; raises MailError."""
        s = self.settings
        try:
            context = self.context() if s.ssl != "none" else None
            if s.ssl == "ssl":
                smtp: smtplib.SMTP = smtplib.SMTP_SSL(s.host, s.port, local_hostname=self.local_hostname,
                                                      timeout=timeout, context=context)
            else:
                smtp = smtplib.SMTP(s.host, s.port, local_hostname=self.local_hostname, timeout=timeout)
        except (OSError, ssl.SSLError) as err:
            raise MailError(describe(err, timeout)) from None
        try:
            smtp.ehlo()
            if s.ssl == "starttls":
                smtp.starttls(context=context)
                smtp.ehlo()
            if s.username:
                self._login(smtp)
        except (OSError, smtplib.SMTPException, UnicodeError) as err:
            smtp.close()
            raise MailError(describe(err, timeout)) from None
        return smtp

    def _login(self, smtp: smtplib.SMTP) -> None:
        s = self.settings
        if not smtp.has_extn("auth"):
            raise smtplib.SMTPNotSupportedError("the server offers no AUTH (USERNAME is set)")
        offered = smtp.esmtp_features.get("auth", "").upper().split()
        if s.auth_method not in offered:
            raise smtplib.SMTPNotSupportedError(
                f"the server does not offer AUTH {s.auth_method} (AUTH_METHOD); it offers {' '.join(offered)}")
        smtp.user, smtp.password = s.username, s.password.reveal()
        try:
            smtp.auth(s.auth_method, getattr(smtp, AUTH_OBJECTS[s.auth_method]))
        finally:
            smtp.password = ""

    def send(self, smtp: smtplib.SMTP, message: EmailMessage) -> dict[str, Any]:
        """Send one message; the recipients refused (others got it). Raises Rejected or MailError."""
        try:
            return smtp.send_message(message)
        except smtplib.SMTPRecipientsRefused as err:
            if all(500 <= code < 600 for code, _ in err.recipients.values()):
                raise Rejected(describe(err)) from None
            raise MailError(describe(err)) from None
        except (smtplib.SMTPSenderRefused, smtplib.SMTPDataError) as err:
            if 500 <= err.smtp_code < 600:
                raise Rejected(describe(err)) from None
            raise MailError(describe(err)) from None
        except (OSError, smtplib.SMTPException) as err:
            raise MailError(describe(err)) from None

    @staticmethod
    def close(smtp: smtplib.SMTP) -> None:
        try:
            smtp.quit()
        except (OSError, smtplib.SMTPException):
            smtp.close()


def describe(err: BaseException, timeout: float | None = None) -> str:
    """A one-line reason for the log (server answers are its text; never a password)."""
    if isinstance(err, ssl.SSLCertVerificationError):
        return f"TLS certificate refused: {str(err.verify_message or err.reason).rstrip('.')}"
    if isinstance(err, (socket.timeout, TimeoutError)):
        return f"no answer within {timeout:g} s" if timeout else "timed out"
    if isinstance(err, smtplib.SMTPRecipientsRefused):
        return "recipients refused: " + "; ".join(
            f"{addr}: {code} {_text(resp)}" for addr, (code, resp) in err.recipients.items())
    if isinstance(err, smtplib.SMTPResponseException):
        return f"{err.smtp_code} {_text(err.smtp_error)}"
    if isinstance(err, smtplib.SMTPNotSupportedError):
        return str(err).rstrip(".")
    if isinstance(err, UnicodeError):
        return "USERNAME or PASSWORD is not ASCII"     # the exception would show the character
    text = str(err) or type(err).__name__
    return text if isinstance(err, smtplib.SMTPException) else f"{type(err).__name__}: {text}"


def _text(raw: Any) -> str:
    return raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)

"""What alert mails say: one mail per event, digests of many, and the message itself.

Every value that comes from the directory, a command or the configuration is
escaped as in the log (provisioning.base.log.escape: a newline shows as ``\\n``)
before it goes into a subject or a body, so a hostile DN can neither add a
header nor forge a line of the body. Subjects are cut to a readable length.
Bodies are plain UTF-8 text.
"""
from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field, replace
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import formatdate, make_msgid

from provisioning.base.log import escape
from provisioning.alerts.mailer import MailSettings, safe_hostname

SUBJECT_MAX = 200          # characters of a subject, prefix included
DIGEST_ITEMS = 20          # entries a digest lists by DN
DIGEST_DETAILS = 3         # entries whose log lines a digest shows
MAX_LINE = 998             # characters of a line SMTP allows (RFC 5321)
# 7bit: a body with non-ASCII text goes quoted-printable or base64, which every
# server takes (8bit would need the server's 8BITMIME).
POLICY = SMTP.clone(cte_type="7bit")


@dataclass(frozen=True)
class Origin:
    """Who sends: the host, its ENVIRONMENT and the service (SERVICE/TYPE)."""

    host: str
    environment: str
    service: str

    @property
    def where(self) -> str:
        return self.environment or self.host


@dataclass(frozen=True)
class Failure:
    """A request that failed (a return value other than 0) or was refused."""

    dn: str
    verb: str
    code: int
    meaning: str
    lines: tuple[str, ...]
    at: float = field(default_factory=time.time)

    @property
    def key(self) -> str:
        meaning = f" ({escape(self.meaning)})" if self.meaning else ""
        return f"{escape(self.verb)}, return value {self.code}{meaning}"


@dataclass(frozen=True)
class Done:
    """A request done (WANTINFOMAIL)."""

    dn: str
    verb: str
    lines: tuple[str, ...]
    at: float = field(default_factory=time.time)

    @property
    def key(self) -> str:
        return f"{escape(self.verb)} done"


@dataclass(frozen=True)
class Notice:
    """Something a person should know that is no request's outcome."""

    subject: str
    text: str
    dn: str | None = None
    at: float = field(default_factory=time.time)

    @property
    def key(self) -> str:
        return escape(self.subject)


Event = Failure | Done | Notice

# kind -> (one event, several events) in subjects and bodies
NOUNS = {"failure": ("failed request", "failed requests"), "done": ("done request", "done requests"),
         "warning": ("warning", "warnings")}


@dataclass(eq=False)       # compared by identity: two alike mails are still two
class Draft:
    """A mail waiting to be sent; the message is made when it is sent (current [Mail] settings)."""

    kind: str               # failure, done, warning; "-digest" appended for digests
    subject: str            # one line, escaped
    body: str
    count: int              # events it reports
    created: float = field(default_factory=time.time)
    since: float = 0.0      # the Alerts clock when it was queued (for giving up)


class Digest:
    """Events of one kind within a window: counted all, the first few kept."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.count = 0
        self.by: Counter[str] = Counter()
        self.items: list[Event] = []
        self.first = self.last = 0.0

    def add(self, event: Event) -> None:
        self.count += 1
        self.by[event.key] += 1
        if len(self.items) < DIGEST_ITEMS:
            # Only the first few show their log lines: the others need not keep them.
            keep = len(self.items) < DIGEST_DETAILS or isinstance(event, Notice)
            self.items.append(event if keep else replace(event, lines=()))
        self.last = event.at
        if self.count == 1:
            self.first = event.at


# ---------------------------------------------------------------- drafts

def failure_mail(origin: Origin, event: Failure) -> Draft:
    what = f"{escape(event.verb)} failed with return value {event.code}: {escape(event.dn)}"
    meaning = f" ({escape(event.meaning)})" if event.meaning else ""
    body = (f"A provisioning request failed on {escape(origin.host)}.\n\n"
            + _fields(origin, event.at, [("DN", escape(event.dn)), ("Request", escape(event.verb)),
                                         ("Return value", f"{event.code}{meaning}")])
            + _lines("Log lines of this request", event.lines))
    return Draft("failure", subject(origin, what), body, 1)


def done_mail(origin: Origin, event: Done) -> Draft:
    what = f"{escape(event.verb)} done: {escape(event.dn)}"
    body = (f"A provisioning request was done on {escape(origin.host)}.\n\n"
            + _fields(origin, event.at, [("DN", escape(event.dn)), ("Request", escape(event.verb))])
            + _lines("Log lines of this request", event.lines))
    return Draft("done", subject(origin, what), body, 1)


def warning_mail(origin: Origin, event: Notice) -> Draft:
    what = f"warning: {escape(event.subject)}" + (f": {escape(event.dn)}" if event.dn else "")
    extra = [("DN", escape(event.dn))] if event.dn else []
    body = (f"Warning from the provisioning daemon on {escape(origin.host)}: {escape(event.subject)}\n\n"
            + _fields(origin, event.at, extra) + "\n" + _text(event.text) + "\n")
    return Draft("warning", subject(origin, what), body, 1)


def digest_mail(origin: Origin, digest: Digest, window: float) -> Draft:
    one, many = NOUNS[digest.kind]
    noun = one if digest.count == 1 else many
    what = f"digest: {digest.count} {noun} in {_duration(window)}"
    counts = "".join(f"  {n:>7}  {key}\n" for key, n in digest.by.most_common())
    listed = "".join(f"  {_item(event)}\n" for event in digest.items)
    more = digest.count - len(digest.items)
    if more:
        listed += f"  ... and {more} more, not listed\n"
    details = "".join(_detail(event) for event in digest.items[:DIGEST_DETAILS])
    body = (f"{digest.count} {noun} on {escape(origin.host)} from {_utc(digest.first)}\n"
            f"to {_utc(digest.last)}, in one mail so that a storm does not become a storm\n"
            f"of mail: the first after a quiet time is mailed on its own, the ones after it\n"
            f"in one digest every {_duration(window)}.\n\n"
            + _fields(origin, digest.last, [])
            + f"\nBy kind ({digest.count} in all):\n{counts}"
            + f"\nThe first {len(digest.items)}:\n{listed}"
            + details)
    return Draft(f"{digest.kind}-digest", subject(origin, what), body, digest.count)


def subject(origin: Origin, what: str) -> str:
    text = f"[Provisioning] {escape(origin.service)} on {escape(origin.where)}: {what}"
    return text if len(text) <= SUBJECT_MAX else text[:SUBJECT_MAX - 3] + "..."


def _fields(origin: Origin, at: float, extra: list[tuple[str, str]]) -> str:
    rows = [("Host", escape(origin.host)),
            ("Environment", escape(origin.environment) or "(empty: this host serves every account)"),
            ("Service", escape(origin.service)), *extra, ("Time", _utc(at))]
    return "".join(f"{name + ':':<14}{value}\n" for name, value in rows)


def _lines(title: str, lines: tuple[str, ...]) -> str:
    if not lines:
        return f"\n{title}: none were logged.\n"
    return f"\n{title}:\n" + "".join(f"  {_one_line(line)}\n" for line in lines)


def _item(event: Event) -> str:
    if isinstance(event, Notice):
        return escape(event.subject) + (f": {escape(event.dn)}" if event.dn else "")
    return f"{escape(event.dn)}  ({event.key})"


def _detail(event: Event) -> str:
    if isinstance(event, Notice):
        return f"\n--- {_item(event)}\n{_text(event.text)}\n"
    return f"\n--- {_item(event)} at {_utc(event.at)}" + _lines("log lines", event.lines)


def _text(text: str) -> str:
    """Free text (a warning): its own lines kept, each escaped."""
    return "\n".join(escape(line) for line in str(text).split("\n"))


def _one_line(line: str) -> str:
    # Lines captured through the log's one-line formatter are escaped
    # already; escaping them again would double their backslashes. Anything
    # else still gets escaped.
    bare = line.replace("\\", "")
    return line if escape(bare) == bare else escape(line)


def _utc(at: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(at))


def _duration(seconds: float) -> str:
    if seconds >= 120:
        return f"{seconds / 60:g} min"
    return f"{seconds:g} s"


# ---------------------------------------------------------------- message

def build_message(draft: Draft, settings: MailSettings, host: str) -> EmailMessage:
    """The message for ``draft`` as the settings say now (From, To)."""
    message = EmailMessage(policy=POLICY)
    message["Subject"] = draft.subject
    message["From"] = settings.sender(host)
    message["To"] = ", ".join(settings.sendto)
    message["Date"] = formatdate(draft.created, localtime=True)
    message["Message-ID"] = make_msgid("provisioning", domain=safe_hostname(host))
    message["Auto-Submitted"] = "auto-generated"     # RFC 3834: no vacation replies to the daemon
    message["X-Provisioning-Kind"] = draft.kind
    message["X-Provisioning-Count"] = str(draft.count)
    # Plain ASCII with lines SMTP allows goes as it is; anything else is
    # encoded (quoted-printable or base64, the library's choice), so that no
    # server needs 8BITMIME.
    plain = draft.body.isascii() and max(map(len, draft.body.split("\n"))) <= MAX_LINE
    message.set_content(draft.body, charset="utf-8", cte="7bit" if plain else None)
    return message

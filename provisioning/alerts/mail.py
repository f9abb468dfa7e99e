"""Mail alerts ([Mail] of Global.conf): failed requests, done requests, warnings.

Provisioning never waits for mail. ``failed``, ``done`` and ``warning`` only
put something in memory under a short lock; one background thread talks to
the SMTP server (provisioning.alerts.mailer). A server that is down, slow, or
refuses TLS or the password costs that thread its time, nothing else.

A storm does not become a storm of mail. Each kind of event (failures, done
requests, warnings) has a window (WINDOW, 5 minutes): the first event after
a quiet time is mailed at once and opens the window; what comes while it is
open is collected into one digest, mailed when the window ends, with the
count of every kind (verb and return value), the first DNs and the log lines
of the first few; then a new window opens. A continuing storm therefore
sends one digest per window, and every event is counted in exactly one mail:
nothing is dropped without a mail saying how many.

Mail that cannot be sent is kept (in memory: the daemon's folder may be
what is full) and tried again after 15 s, doubling up to 10 min. It is
given up, and the loss logged with the count and the subjects, when it has
waited GIVE_UP_AFTER (6 h), when more than MAX_KEPT (100) mails wait (the
oldest goes), when the server refuses it for good (5xx), and at close() for
what the time given does not suffice to send. With digests, 100 mails cover
8 hours of a continuous storm of one kind with the server away (12 digests an
hour), nearly 3 hours of all three kinds at once.

The daemon wraps each job in ``RequestLog.capture()`` to give a failure
mail the log lines of its request (provisioning.alerts.requestlog).
"""
from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from typing import Any, Callable, Mapping

from provisioning.config.loader import Config, ConfigError
from provisioning.base.log import escape
from provisioning.alerts.mailer import Mailer, MailError, MailSettings, Rejected
from provisioning.alerts.mailtext import (
    Digest, Done, Draft, Event, Failure, Notice, Origin, build_message, digest_mail, done_mail,
    failure_mail, warning_mail,
)
from provisioning.alerts.requestlog import RequestLog

__all__ = ["Alerts", "MailSettings", "RequestLog", "alerts_from_config", "mail_problems"]

log = logging.getLogger(__name__)

WINDOW = 300.0            # s: events after the first in this time are digested
RETRY_FIRST = 15.0        # s: first wait after a failed attempt to send
RETRY_MAX = 600.0         # s: the wait doubles up to this
GIVE_UP_AFTER = 6 * 3600.0  # s: a mail not sent by then is given up (logged)
MAX_KEPT = 100            # mails kept at most; beyond, the oldest is given up (logged)
SEND_TIMEOUT = 30.0       # s: for each step of an SMTP session
SUBJECTS_LOGGED = 10      # subjects a loss names before "and N more"

KINDS = ("failure", "done", "warning")


class Channel:
    """The storm guard of one kind of event: at once, or into the window's digest."""

    def __init__(self, kind: str, window: float) -> None:
        self.kind = kind
        self.window = window
        self.until: float | None = None       # end of the open window; None: quiet
        self.digest = Digest(kind)

    def offer(self, event: Event, now: float) -> tuple[bool, Digest | None]:
        """(mail ``event`` on its own?, a digest that was due before it)."""
        due = self.due(now)
        if self.until is None:
            self.until = now + self.window
            return True, due
        self.digest.add(event)
        return False, due

    def due(self, now: float, force: bool = False) -> Digest | None:
        """The digest of a window that ended (any with ``force``); a new window follows it."""
        if self.until is None or (now < self.until and not force):
            return None
        if not self.digest.count:
            self.until = None                 # a quiet window: the next event goes at once
            return None
        digest, self.digest = self.digest, Digest(self.kind)
        self.until = now + self.window
        return digest

    @property
    def deadline(self) -> float | None:
        """When the digest in hand must go, if there is one."""
        return self.until if self.digest.count else None


class Alerts:
    """Queues alert mails; one background thread sends them (see the module's docstring)."""

    def __init__(self, mail_settings: MailSettings | Mapping[str, Any], *, host: str, environment: str,
                 service: str, clock: Callable[[], float] = time.monotonic, window: float = WINDOW,
                 retry: float = RETRY_FIRST, retry_max: float = RETRY_MAX,
                 give_up_after: float = GIVE_UP_AFTER, max_kept: int = MAX_KEPT,
                 timeout: float = SEND_TIMEOUT, background: bool = True) -> None:
        self.settings = _settings(mail_settings)
        self.origin = Origin(host, environment, service)
        self.clock = clock
        self.window = window
        self.retry, self.retry_max = retry, retry_max
        self.give_up_after, self.max_kept = give_up_after, max_kept
        self.timeout = timeout
        self._mailer = Mailer(self.settings, local_hostname=host)
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._send_lock = threading.Lock()       # one SMTP session at a time (thread, flush, close)
        self._channels = {kind: Channel(kind, window) for kind in KINDS}
        self._outbox: deque[Draft] = deque()
        self._next_try = -math.inf
        self._delay = 0.0
        self._failing_since: float | None = None
        self._closed = False
        self._stop_by = math.inf                 # close(): when the last attempt must end
        self._thread: threading.Thread | None = None
        if self.settings.ssl == "none" and self.settings.username:
            log.warning("[Mail] SSL = none: the mail password goes to %s unencrypted", self.settings.server)
        if background:
            self._thread = threading.Thread(target=self._run, name="mail-alerts", daemon=True)
            self._thread.start()

    # ------------------------------------------------------- callers: queue only

    def failed(self, dn: str, verb: str, code: int, meaning: str, lines: list[str]) -> None:
        """A request failed (return value other than 0) or was refused."""
        self._offer(lambda: Failure(dn, verb, int(code), meaning, tuple(lines)), failure_mail)

    def done(self, dn: str, verb: str, lines: list[str]) -> None:
        """A request was done; mailed only with WANTINFOMAIL."""
        if self.settings.wantinfomail:
            self._offer(lambda: Done(dn, verb, tuple(lines)), done_mail)

    def warning(self, subject: str, text: str, dn: str | None = None) -> None:
        """Something a person must look at that is no request's outcome (always mailed)."""
        self._offer(lambda: Notice(subject, text, dn), warning_mail)

    def update(self, mail_settings: MailSettings | Mapping[str, Any]) -> None:
        """New [Mail] settings (SIGHUP); mails still kept go out with them.

        Raises ValueError naming the problems of settings that cannot be used
        (the old ones stay); to turn mail off (empty SENDTO), close() instead.
        """
        settings = _settings(mail_settings)
        problems = settings.problems() if settings.sendto else ["SENDTO: empty (to stop mail alerts, close them)"]
        if problems:
            raise ValueError("; ".join(f"[Mail] {p}" for p in problems))
        with self._lock:
            self.settings = settings
            self._mailer = Mailer(settings, local_hostname=self.origin.host)
            self._next_try = -math.inf          # try the new server now
            self._wake.notify()

    def _offer(self, event: Callable[[], Event], compose: Callable[[Origin, Any], Draft]) -> None:
        try:
            self._take(event(), compose)
        except Exception:  # noqa: BLE001 - an alert must never cost the request that raised it
            log.exception("cannot queue a mail alert")

    def _take(self, event: Event, compose: Callable[[Origin, Any], Draft]) -> None:
        kind = {Failure: "failure", Done: "done", Notice: "warning"}[type(event)]
        lost: list[Draft] = []
        with self._lock:
            if self._closed:
                lost.append(compose(self.origin, event))
            else:
                now = self.clock()
                alone, due = self._channels[kind].offer(event, now)
                if due is not None:
                    lost += self._queue(digest_mail(self.origin, due, self.window), now)
                if alone:
                    lost += self._queue(compose(self.origin, event), now)
                self._wake.notify()
        if self._closed and lost:
            _log_lost(lost, "after the mail alerts were closed")
        elif lost:
            _log_lost(lost, f"because more than {self.max_kept} mails were waiting")

    def _queue(self, draft: Draft, now: float) -> list[Draft]:
        """Add to the outbox (lock held); return what had to give way."""
        draft.since = now
        self._outbox.append(draft)
        lost = []
        while len(self._outbox) > self.max_kept:
            lost.append(self._outbox.popleft())
        return lost

    # ---------------------------------------------------------------- sending

    def flush(self) -> None:
        """Send now what is due: digests whose window ended and every kept mail (no waiting
        for the next retry). Blocks while it sends; for tests and shutdown."""
        with self._lock:
            now = self.clock()
            crowded = self._digests_due(now)
            expired = self._expired(now)
            batch = list(self._outbox)
        _log_lost(crowded, f"because more than {self.max_kept} mails were waiting")
        _log_lost(expired, f"after {self.give_up_after:g} s of trying")
        if batch:
            self._deliver(batch, self.timeout)

    def close(self, timeout: float) -> None:
        """Mail every digest in hand and send what is kept, for at most ``timeout`` seconds;
        log what could not be sent. Later alerts are logged as not mailed."""
        ends = time.monotonic() + timeout
        with self._lock:
            if self._closed:
                return
            self._closed = True
            now = self.clock()
            for channel in self._channels.values():
                digest = channel.due(now, force=True)
                if digest is not None:
                    # Queued now: its age counts from now (a draft's default is 0, which
                    # the clock passes after GIVE_UP seconds of uptime: "lost" at once).
                    draft = digest_mail(self.origin, digest, self.window)
                    draft.since = now
                    self._outbox.append(draft)
            self._next_try = -math.inf
            self._stop_by = ends
            self._wake.notify()
        if self._thread is not None:
            self._thread.join(max(0.0, ends - time.monotonic()))
        elif self._outbox:
            self._deliver(list(self._outbox), timeout)
        with self._lock:
            lost, self._outbox = list(self._outbox), deque()
        busy = self._thread is not None and self._thread.is_alive()
        _log_lost(lost, f"at the stop: not sent within {timeout:g} s"
                        + (" (the SMTP server had not answered yet)" if busy else ""))

    def _run(self) -> None:
        """The sending thread; a bug in it is logged and waited out, it does not end the thread."""
        while True:
            try:
                if self._round():
                    return
            except Exception:  # noqa: BLE001 - the thread must go on: mails would pile up unsent
                log.exception("mail alerts: unexpected error in the sending thread")
                with self._lock:
                    self._wake.wait(self.retry)

    def _round(self) -> bool:
        """Wait for work or a digest's time, then send; True when closed."""
        with self._lock:
            while True:
                now = self.clock()
                crowded = self._digests_due(now)
                expired = self._expired(now)
                ready = bool(self._outbox) and now >= self._next_try
                if crowded or expired or ready or self._closed:
                    break
                self._wake.wait(self._sleep(now))
            batch = list(self._outbox) if ready or self._closed else []
            final = self._closed
        _log_lost(crowded, f"because more than {self.max_kept} mails were waiting")
        _log_lost(expired, f"after {self.give_up_after:g} s of trying")
        if batch:
            timeout = max(0.1, min(self.timeout, self._stop_by - time.monotonic())) if final else self.timeout
            self._deliver(batch, timeout)
        return final

    def _sleep(self, now: float) -> float | None:
        """Seconds until something is due (lock held); None: until woken."""
        times = [t for t in (ch.deadline for ch in self._channels.values()) if t is not None]
        if self._outbox:
            times += [self._next_try, min(d.since for d in self._outbox) + self.give_up_after]
        return max(0.0, min(times) - now) if times else None

    def _digests_due(self, now: float) -> list[Draft]:
        """Queue the digests whose window ended (lock held); return what had to give way."""
        lost: list[Draft] = []
        for channel in self._channels.values():
            digest = channel.due(now)
            if digest is not None:
                lost += self._queue(digest_mail(self.origin, digest, self.window), now)
        return lost

    def _expired(self, now: float) -> list[Draft]:
        expired = [d for d in self._outbox if now - d.since > self.give_up_after]
        for draft in expired:
            self._outbox.remove(draft)
        return expired

    def _deliver(self, batch: list[Draft], timeout: float) -> None:
        """One SMTP session for ``batch``; what is sent or refused for good leaves the outbox."""
        with self._send_lock:
            with self._lock:
                batch = [d for d in batch if d in self._outbox]   # flush() may have sent some
                mailer, settings = self._mailer, self.settings
            if not batch:
                return
            try:
                smtp = mailer.open(timeout)
            except MailError as err:
                self._attempt_failed(settings, err)
                return
            sent = 0
            try:
                for draft in batch:
                    try:
                        message = build_message(draft, settings, self.origin.host)
                    except (ValueError, TypeError):    # a bug: this mail, not the others
                        self._drop(draft)
                        log.exception("mail alert cannot be made, not sent: %s", draft.subject)
                        continue
                    try:
                        refused = mailer.send(smtp, message)
                    except Rejected as err:
                        self._drop(draft)
                        log.error("mail alert refused by %s for good, not sent: %s (%s)",
                                  settings.server, draft.subject, err)
                        continue
                    except MailError as err:
                        self._attempt_failed(settings, err)
                        return
                    self._drop(draft)
                    sent += 1
                    if refused:
                        log.warning("mail alert not accepted for %s by %s: %s", ", ".join(refused),
                                    settings.server, draft.subject)
                    log.debug("mail alert sent through %s: %s", settings.server, draft.subject)
            finally:
                mailer.close(smtp)
            self._attempt_worked(settings, sent)

    def _drop(self, draft: Draft) -> None:
        with self._lock:
            if draft in self._outbox:
                self._outbox.remove(draft)

    def _attempt_failed(self, settings: MailSettings, err: MailError) -> None:
        with self._lock:
            now = self.clock()
            self._delay = self.retry if not self._delay else min(self._delay * 2, self.retry_max)
            self._next_try = now + self._delay
            if self._failing_since is None:
                self._failing_since = now
            kept, delay = len(self._outbox), self._delay
        log.warning("cannot send mail alerts through %s: %s; %d kept, trying again in %g s",
                    settings.server, err, kept, delay)

    def _attempt_worked(self, settings: MailSettings, sent: int) -> None:
        with self._lock:
            since, self._failing_since = self._failing_since, None
            self._delay = 0.0
            self._next_try = -math.inf
            waited = self.clock() - since if since is not None else 0.0
        if since is not None:
            log.info("%s takes mail alerts again: %d sent after %.0f s of trying", settings.server, sent, waited)


def _settings(value: MailSettings | Mapping[str, Any]) -> MailSettings:
    return value if isinstance(value, MailSettings) else MailSettings.from_section(value)


def _log_lost(drafts: list[Draft], why: str) -> None:
    """Say what was given up: how many mails and events, and their subjects."""
    if not drafts:
        return
    subjects = "; ".join(d.subject for d in drafts[:SUBJECTS_LOGGED])
    more = f"; and {len(drafts) - SUBJECTS_LOGGED} more" if len(drafts) > SUBJECTS_LOGGED else ""
    log.error("mail alerts lost %s: %d mail(s) reporting %d event(s): %s%s", why, len(drafts),
              sum(d.count for d in drafts), subjects, more)


# ------------------------------------------------------------- configuration

def mail_problems(config: Config) -> list[str]:
    """What is wrong in [Mail] beyond the configspec, named as the other configuration errors."""
    label = config.global_path or "built-in Global.conf defaults"
    return [f"{label}: [Mail] {problem}"
            for problem in MailSettings.from_section(config.global_["Mail"]).problems()]


def alerts_from_config(config: Config, *, host: str, **tuning: Any) -> Alerts | None:
    """The Alerts [Mail] describes, its thread started; None when SENDTO is empty.

    Raises ConfigError listing every problem of [Mail]. ``tuning``: Alerts'
    keyword arguments (window, retry, ...), for tests.
    """
    problems = mail_problems(config)
    if problems:
        raise ConfigError(problems)
    settings = MailSettings.from_section(config.global_["Mail"])
    if not settings.sendto:
        return None
    return Alerts(settings, host=host, environment=config.service["Global"]["ENVIRONMENT"],
                  service=f"{config.service_name}/{config.type_name}", **tuning)


def describe_settings(settings: MailSettings) -> str:
    """One line for the start-up log (the password shows as ********)."""
    auth = f", AUTH {settings.auth_method} as {escape(settings.username)}" if settings.username else ""
    return (f"mail alerts to {escape(', '.join(settings.sendto))} through {escape(settings.server)} "
            f"({settings.ssl}{auth}){'' if settings.wantinfomail else ', failures and warnings only'}")

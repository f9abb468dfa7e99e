"""What the main loop tells the outside world: systemd, Prometheus, the log.

The daemon calls one object, named for what happens in the loop (connecting,
connected, an entry seen, a job completed, trouble, the refresh done,
stopping), and this object passes it on:

- to systemd (provisioning.observe.notify): READY=1 once the first refresh is done,
  STATUS= with what the daemon is doing, STOPPING=1, and the watchdog
  (provisioning.observe.watchdog) the loop's beats keep fed;
- to the metrics (provisioning.observe.metrics), when METRICS_PORT is set;
- to the refresh's progress lines (provisioning.observe.progress).

Everything here runs in the main loop and is cheap: counters, a clock read,
a datagram when the status text changed (at most once a second). Without
systemd and metrics the parts that would talk to them are no-ops.
"""
from __future__ import annotations

import datetime as dt
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from provisioning.observe.metrics import NoMetrics
from provisioning.observe.notify import Notifier, status_field
from provisioning.observe.progress import Progress
from provisioning.observe.watchdog import Watchdog

if TYPE_CHECKING:
    from provisioning.engine.daemon import Daemon
    from provisioning.engine.results import Result
    from provisioning.engine.workers import Job

log = logging.getLogger(__name__)

# STATUS= is sent again at most this often when only the counts changed.
STATUS_INTERVAL = 1.0


@dataclass(frozen=True)
class Bounds:
    """How long the loop may legitimately stay silent in its announced waits (seconds)."""

    connect: float = 120.0      # one attempt to connect and write kept outcomes
    job: float = 3660.0         # a job run in the loop itself (WORKERS = 1)


class Monitor:
    """The loop's reports, passed on to systemd, metrics and the progress log."""

    def __init__(self, *, base: str, notifier: Notifier | None = None, watchdog: Watchdog | None = None,
                 metrics: NoMetrics | None = None, progress: Progress | None = None,
                 bounds: Bounds = Bounds()) -> None:
        self.base = base
        self.notifier = notifier or Notifier(None)
        self.watchdog = watchdog
        self.metrics = metrics or NoMetrics()
        self.progress = progress or Progress(base)
        self.bounds = bounds
        self.ready = False
        self.done = 0
        self.failed = 0
        self.connections = 0
        self._daemon: "Daemon | None" = None
        self._uri = ""
        self._state = "starting"
        self._away_since: dt.datetime | None = None
        self._away_what = "LDAP"
        self._why = ""
        self._said = ""
        self._status_at = 0.0

    # ----------------------------------------------------------- set-up

    def attach(self, daemon: "Daemon") -> None:
        self._daemon = daemon
        self.metrics.attach(daemon)

    def executor(self, executor: Any) -> Any:
        """``executor`` itself, or, when it runs jobs in the loop under a watchdog, a wrapper
        that announces each job's bound to the watchdog."""
        if self.watchdog is None or getattr(executor, "size", 1) > 1:
            return executor
        return _Patient(executor, self.watchdog, self.bounds.job)

    def poll_interval(self, default: float) -> float:
        """How long the loop may wait for the stream in one round: short enough to beat in time."""
        if self.watchdog is None:
            return default
        return min(default, self.watchdog.grace / 2)

    def start(self) -> "Monitor":
        if self.watchdog is not None:
            self.watchdog.start()
        return self

    def close(self) -> None:
        if self.watchdog is not None:
            self.watchdog.stop()
        self.metrics.close()
        self.notifier.close()

    # ------------------------------------------------------ from the loop

    def beat(self) -> None:
        """Every round of the loop."""
        if self.watchdog is not None:
            self.watchdog.beat()
        self.progress.tick()
        if self.notifier.enabled and time.monotonic() >= self._status_at:
            self._status()

    def connecting(self) -> None:
        self._state = "connecting"
        self._status(force=True)
        if self.watchdog is not None:
            self.watchdog.expect(self.bounds.connect)

    def away(self, seconds: float, what: str = "LDAP") -> None:
        """``what`` (LDAP, the gateway) did not answer; the loop waits ``seconds`` before trying again."""
        if self._away_since is None or self._away_what != what:
            self._away_since = dt.datetime.now(dt.timezone.utc)
            self._away_what = what
            self._state = "away"
            self._status(force=True)
        if self.watchdog is not None:
            self.watchdog.expect(seconds + self.bounds.connect)

    def host_back(self) -> None:
        """The gateway answers again (the loop reconnects to LDAP next)."""
        self._away_since, self._why = None, ""
        self.metrics.gateway_outage_ended()

    def connected(self, uri: str | None, full: bool) -> None:
        self.connections += 1
        self.metrics.connected(first=self.connections == 1)
        self._uri, self._away_since, self._why = uri or "", None, ""
        self._state = "synchronising"
        self.progress.start(full)
        if self.watchdog is not None:
            self.watchdog.settle()
        self._status(force=True)

    def trouble(self, why: str, host: bool = False) -> None:
        """The directory (``host``: the gateway) went away or refused a write: the loop finishes its work
        and reconnects."""
        self._why = why
        self._state = "trouble"
        if host:
            self.metrics.gateway_outage()
        else:
            self.metrics.directory(False)
        self._status(force=True)

    def seen(self, event: Any) -> None:
        """An entry arrived in the stream (an EntryChanged: its entryCSN is read without decoding it)."""
        self.progress.entries += 1
        self.metrics.seen(event.csn)

    def completed(self, job: "Job", result: "Result") -> None:
        """A job ended (the router has recorded it)."""
        if result.code is None:
            return
        ok = result.code == 0
        if ok:
            self.done += 1
        else:
            self.failed += 1
        self.progress.completed(ok)
        self.metrics.request(result.verb, result.code, result.took)

    def store_writable(self, ok: bool) -> None:
        self.metrics.store(ok)

    def refresh_done(self) -> None:
        self.progress.finish()
        self._state = "current"
        if not self.ready:
            self.ready = True
            self.notifier.send("READY=1", status_field(self._text()))
            self._said, self._status_at = self._text(), time.monotonic() + STATUS_INTERVAL
            return
        self._status(force=True)

    def stopping(self) -> None:
        self._state = "stopping"
        self.notifier.send("STOPPING=1", status_field(self._text()))

    # ------------------------------------------------------------ status

    def _status(self, force: bool = False) -> None:
        if not self.notifier.enabled:
            return
        text = self._text()
        if text != self._said or force:
            self.notifier.status(text)
            self._said = text
        self._status_at = time.monotonic() + STATUS_INTERVAL

    def _text(self) -> str:
        counts = f"{self.done} requests done, {self.failed} failed or refused"
        state = self._state
        if state == "starting":
            return "starting"
        if state == "connecting":
            return "connecting to LDAP"
        if state == "away":
            since = self._away_since or dt.datetime.now(dt.timezone.utc)
            why = f" ({self._why})" if self._why else ""
            return f"waiting for {self._away_what} since {since:%Y-%m-%d %H:%M:%S} UTC{why}; {counts}"
        if state == "trouble":
            return f"{self._why}: finishing the work in hand, then reconnecting; {counts}"
        if state == "synchronising":
            full = " (full refresh)" if self.progress.full else ""
            return (f"synchronising {self.base} from {self._uri}{full}: {self.progress.entries} entries seen; "
                    f"{counts}")
        if state == "stopping":
            return f"stopping: finishing the work in hand; {counts}"
        waiting = self._daemon.waiting if self._daemon is not None else 0
        busy = f", {waiting} in hand" if waiting else ""
        held = len(self._daemon.brake.held) if self._daemon is not None else 0
        brake = f"; {held} removal(s) held by the deletion brake" if held else ""
        return f"waiting for changes; {counts} since the start{busy}{brake}"


def monitor_from_config(config: Any, *, dry_run: bool = False, version: str = "") -> Monitor:
    """The monitor for a daemon started with ``config``: systemd from the environment
    ($NOTIFY_SOCKET, $WATCHDOG_USEC), metrics from [Service] METRICS_PORT (never in a dry-run,
    which runs next to the daemon). Nothing is started yet (``start()``)."""
    from provisioning.observe.metrics import Metrics, MetricsError
    from provisioning.observe.notify import watchdog_seconds

    db, svc = config.service["Database"], config.service["Service"]
    servers = max(1, len(db["SERVER"]))
    # An attempt to connect: per server a connect, a bind, a search or two and the
    # stream's own connect, bind and search, each bounded by TIMEOUT.
    bounds = Bounds(connect=6 * db["TIMEOUT"] * servers,
                    job=svc["CLAIM_LEASE"] + 4 * db["TIMEOUT"])
    notifier = Notifier.from_environment()
    seconds = watchdog_seconds()
    watchdog = Watchdog(seconds, notifier.watchdog) if seconds and notifier.enabled else None
    if watchdog is not None:
        log.debug("systemd watchdog: WATCHDOG=1 every %g s while the main loop moves", watchdog.every)
    metrics = None
    if svc["METRICS_PORT"] and not dry_run:
        metrics = Metrics(service=f"{config.service_name}/{config.type_name}", version=version)
        try:
            metrics.serve(svc["METRICS_ADDRESS"], svc["METRICS_PORT"])
        except MetricsError as err:
            log.error("[Service] METRICS_PORT: %s; going on without metrics", err)
            metrics = None
    return Monitor(base=db["SERVICE_SUBTREE"], notifier=notifier, watchdog=watchdog, metrics=metrics,
                   bounds=bounds)


class _Patient:
    """An executor that runs jobs in the loop itself, each under the watchdog's patience."""

    def __init__(self, inner: Any, watchdog: Watchdog, bound: float) -> None:
        self._inner = inner
        self._watchdog = watchdog
        self._bound = bound

    def submit(self, job: Any) -> None:
        with self._watchdog.patience(self._bound):
            self._inner.submit(job)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

"""Prometheus metrics ([Service] METRICS_PORT; off by default).

With METRICS_PORT set, an HTTP server on METRICS_ADDRESS (default
127.0.0.1: nothing leaves the host unless an operator says so) serves
``/metrics`` in the Prometheus text format (prometheus_client, in a thread
of its own). The main loop feeds the figures through ``Metrics``; with
metrics off it gets ``NoMetrics``, whose methods do nothing, so the hot path
costs a method call.

Names (all prefixed ``provisioning_``):

- ``requests_total{verb,outcome}``: requests worked, outcome ``done``
  (return value 0), ``failed`` (a plugin's value, 1-99) or ``refused`` (the
  core's, 100 and up); verb add, modify, delete (``other`` for a refusal of
  an unknown mode);
- ``request_duration_seconds{verb}``: histogram of the time from the claim
  to the outcome written (the whole job, in the worker);
- ``requests_waiting``: events queued or in hand and not yet finished;
- ``lag_seconds``: how far the acknowledged position (the cookie) is behind
  the newest change seen in the stream, by the CSNs' times; 0 when the cookie
  covers everything seen, NaN when there is no cookie yet to compare;
- ``last_request_done_timestamp_seconds``: when a request was last done
  (Unix time; 0: none since the start);
- ``reconnects_total``: connections made again after the first;
- ``directory_writable``: 1 while connected and the directory takes the
  writes, 0 from a lost connection or refused write until reconnected;
- ``store_writable``: 0 while the state folder refuses the position;
- ``deletions_held``: removals the deletion brake holds for an operator;
- with TRANSPORTAPI = CLISSH: ``gateway_up`` (0 from an operation that
  found the gateway out of reach until it answers again),
  ``gateway_seconds_since_answer`` (since its last answer; NaN before the
  first) and ``gateway_outages_total``;
- ``entries_seen_total``, ``synchronising`` (1 during a refresh) and
  ``info{service,version}``; plus prometheus_client's ``process_*``;
- with [Service] AUDIT_INTERVAL: ``drift{kind}`` (the last audit's findings
  of each kind), ``audit_state`` (0 clean, 1 drift, 2 could not check, -1
  none yet) and ``audit_timestamp_seconds`` (when it ended);
- the plugin's own gauges (hook ``provisioning_metrics``), read when scraped.
"""
from __future__ import annotations

import logging
import math
import re
import time
from typing import TYPE_CHECKING, Any, Callable, Iterator

from provisioning.backend.cookie import by_sid, cookie_csns, covered, csn_sid
from provisioning.base.log import escape
from provisioning.transport.base import Reach

if TYPE_CHECKING:
    from provisioning.observe.view import LoopView

log = logging.getLogger(__name__)

VERBS = ("add", "modify", "delete")
OUTCOMES = ("done", "failed", "refused")
# Seconds: from a fast add (~10 ms) to COMMAND_TIMEOUT's default.
DURATION_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)


class MetricsError(Exception):
    """The metrics endpoint cannot be served (address in use, bad address)."""


def outcome(code: int) -> str:
    """done, failed or refused, by the return value."""
    if code == 0:
        return "done"
    return "refused" if code >= 100 else "failed"


class NoMetrics:
    """Metrics off: every call does nothing."""

    enabled = False
    port = 0

    def attach(self, daemon: "LoopView") -> None:
        pass

    def request(self, verb: str | None, code: int, seconds: float | None) -> None:
        pass

    def seen(self, csn: str | None) -> None:
        pass

    def connected(self, first: bool) -> None:
        pass

    def directory(self, writable: bool) -> None:
        pass

    def gateway_outage(self) -> None:
        pass

    def gateway_outage_ended(self) -> None:
        pass

    def store(self, writable: bool) -> None:
        pass

    def audit(self, figures: Callable[[], Any]) -> None:
        pass

    def close(self) -> None:
        pass


class Metrics(NoMetrics):
    """The figures, in a registry of their own, served over HTTP once ``serve()`` ran."""

    enabled = True

    def __init__(self, *, service: str, version: str) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector

        self.registry = reg = CollectorRegistry()
        ProcessCollector(registry=reg)
        p = "provisioning_"
        self.requests = Counter(p + "requests", "Requests worked, by verb and outcome (done, failed, refused)",
                                ["verb", "outcome"], registry=reg)
        for verb in VERBS:
            for out in OUTCOMES:
                self.requests.labels(verb, out)          # present at 0 from the start: rate() works
        self.duration = Histogram(p + "request_duration_seconds", "Time from the claim to the outcome written",
                                  ["verb"], buckets=DURATION_BUCKETS, registry=reg)
        for verb in VERBS:
            self.duration.labels(verb)
        self.waiting = Gauge(p + "requests_waiting", "Events queued or in hand, not yet finished", registry=reg)
        self.lag = Gauge(p + "lag_seconds", "How far the acknowledged cookie is behind the newest change seen "
                         "(CSN times); NaN without a cookie", registry=reg)
        self.last_done = Gauge(p + "last_request_done_timestamp_seconds", "When a request was last done "
                               "(Unix time; 0: none since the start)", registry=reg)
        self.reconnects = Counter(p + "reconnects", "Connections to LDAP made again after the first",
                                  registry=reg)
        self.directory_writable = Gauge(p + "directory_writable", "1 while connected and the directory takes "
                                        "writes", registry=reg)
        self.store_writable = Gauge(p + "store_writable", "1 while the state folder takes the position",
                                    registry=reg)
        self.entries = Counter(p + "entries_seen", "Entries the sync stream delivered", registry=reg)
        self.synchronising = Gauge(p + "synchronising", "1 during a refresh", registry=reg)
        self.deletions_held = Gauge(p + "deletions_held", "Removals the deletion brake holds for an operator",
                                    registry=reg)
        self.gateway_up = Gauge(p + "gateway_up", "1 while the CLISSH gateway answers, 0 from an operation that "
                                "found it out of reach until it answers again", registry=reg)
        self.gateway_silent = Gauge(p + "gateway_seconds_since_answer", "Seconds since the CLISSH gateway last "
                                    "answered (NaN before its first answer)", registry=reg)
        self.gateway_outages = Counter(p + "gateway_outages", "Times the CLISSH gateway was found out of reach",
                                       registry=reg)
        info = Gauge(p + "info", "The service this daemon runs", ["service", "version"], registry=reg)
        info.labels(service, version).set(1)
        self.store_writable.set(1)
        self._store_ok = True
        self.newest_csn: str | None = None
        self._daemon: "LoopView | None" = None
        self._server: Any = None
        self.port = 0

    def serve(self, address: str, port: int) -> None:
        """Start the HTTP endpoint; MetricsError when it cannot listen."""
        from prometheus_client import start_http_server

        try:
            started = start_http_server(port, addr=address, registry=self.registry)
        except (OSError, ValueError) as err:
            raise MetricsError(f"cannot serve metrics on {address} port {port}: {err}") from err
        self._server = started[0] if isinstance(started, tuple) else None
        self.port = self._server.server_address[1] if self._server is not None else port
        log.info("metrics for Prometheus on http://%s:%d/metrics", escape(_host(address)), self.port)

    def attach(self, daemon: "LoopView") -> None:
        """Figures read from the daemon when scraped (from the server's thread: reads only)."""
        self._daemon = daemon
        self.waiting.set_function(lambda: daemon.waiting)
        self.lag.set_function(self._lag)
        self.synchronising.set_function(lambda: 1 if daemon.in_refresh else 0)
        self.deletions_held.set_function(lambda: daemon.held_removals)
        self.registry.register(PluginGauges(daemon.gauges))
        reach = daemon.reach
        if reach() is None:              # this host: nothing to show
            self.registry.unregister(self.gateway_up)
            self.registry.unregister(self.gateway_silent)
            self.registry.unregister(self.gateway_outages)
            return
        self.gateway_up.set_function(lambda: 1 if (reach() or _UP).up else 0)
        self.gateway_silent.set_function(lambda: _silent_for(reach()))

    def request(self, verb: str | None, code: int, seconds: float | None) -> None:
        verb = verb if verb in VERBS else "other"
        self.requests.labels(verb, outcome(code)).inc()
        if seconds is not None:
            self.duration.labels(verb).observe(seconds)
        if code == 0:
            self.last_done.set(time.time())

    def seen(self, csn: str | None) -> None:
        self.entries.inc()
        if csn and (self.newest_csn is None or csn > self.newest_csn):
            self.newest_csn = csn

    def connected(self, first: bool) -> None:
        if not first:
            self.reconnects.inc()
        self.directory_writable.set(1)

    def directory(self, writable: bool) -> None:
        self.directory_writable.set(1 if writable else 0)

    def gateway_outage(self) -> None:
        self.gateway_outages.inc()

    def store(self, writable: bool) -> None:
        if writable != self._store_ok:
            self._store_ok = writable
            self.store_writable.set(1 if writable else 0)

    def audit(self, figures: Callable[[], Any]) -> None:
        """The daemon's audits (runtime.auditjob): ``figures()`` gives the last one's state, time and counts."""
        self.registry.register(DriftGauges(figures))

    def _lag(self) -> float:
        cookie = self._daemon.acknowledged if self._daemon is not None else None
        return lag_seconds(self.newest_csn, cookie)

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


_UP = Reach("", True, 0.0, None)


def _silent_for(reach: Reach | None) -> float:
    seconds = reach.silent_for() if reach is not None else None
    return math.nan if seconds is None else seconds


class PluginGauges:
    """The plugin's gauges (Service.gauges), asked for at each scrape; invalid names are left out."""

    NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")

    def __init__(self, gauges: Callable[[], dict[str, tuple[float, str]]]) -> None:
        self.gauges = gauges

    def describe(self) -> list:
        return []               # names unknown until asked: registering must not call collect()

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        for name, (value, text) in sorted(self.gauges().items()):
            if self.NAME.fullmatch(name):
                yield GaugeMetricFamily(f"provisioning_{name}", text, value=float(value))


class DriftGauges:
    """The last audit's figures, read at each scrape."""

    def __init__(self, figures: Callable[[], Any]) -> None:
        self.figures = figures

    def describe(self) -> list:
        return []

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        last = self.figures()
        drift = GaugeMetricFamily("provisioning_drift", "Findings of the last audit, by kind", labels=["kind"])
        for kind, count in sorted(last.counts.items()):
            drift.add_metric([kind], float(count))
        yield drift
        yield GaugeMetricFamily("provisioning_audit_state", "The last audit: 0 clean, 1 drift, 2 could not check, "
                                "-1 none yet", value=float(last.state))
        yield GaugeMetricFamily("provisioning_audit_timestamp_seconds", "When the last audit ended (Unix time; "
                                "0: none yet)", value=float(last.at))


def lag_seconds(newest: str | None, cookie: str | None) -> float:
    """Seconds between the newest change seen and the cookie's CSN of its server; 0 when covered."""
    if newest is None or covered(newest, cookie):
        return 0.0
    mark = by_sid(cookie_csns(cookie)).get(csn_sid(newest))
    if mark is None:
        return math.nan
    try:
        return max(0.0, _csn_seconds(newest) - _csn_seconds(mark))
    except ValueError:
        return math.nan


def _csn_seconds(csn: str) -> float:
    """A CSN's time as Unix seconds (``20261127120000.123456Z#...``)."""
    import calendar

    stamp = csn.split("#", 1)[0].rstrip("Z")
    whole, _, fraction = stamp.partition(".")
    at = time.strptime(whole, "%Y%m%d%H%M%S")
    return calendar.timegm(at) + float(f"0.{fraction or '0'}")


def _host(address: str) -> str:
    return f"[{address}]" if ":" in address else address

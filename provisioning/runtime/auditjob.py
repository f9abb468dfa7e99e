"""The daemon's own audit: ``provisioning-daemon audit --json`` every [Service] AUDIT_INTERVAL seconds.

Off by default (0). The audit runs as a process of its own, started by a
thread of the daemon: an audit of 100,000 accounts holds a picture of the
host for a while, and that memory (and any failure) stays out of the
daemon. Its result gives

- the drift counts by kind for the metrics (``provisioning_drift{kind}``,
  ``provisioning_audit_state``, ``provisioning_audit_timestamp_seconds``);
- a log line after each audit (INFO when clean, WARNING with drift);
- a mail digest ([Mail]) when the counts change: drift found, drift
  changed, drift gone. The same drift is not mailed again.

It never repairs: ``audit --repair`` is an operator's decision.
"""
from __future__ import annotations

import json
import logging
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from provisioning.alerts.mail import Alerts
from provisioning.config.loader import Config

log = logging.getLogger(__name__)

# Finding lines a digest shows (all are in provisioning-daemon audit's output).
DIGEST_LINES = 50
# Seconds the audit process gets to end after a stop asked it to (then it is killed).
STOP_GRACE = 10.0
# The audit's exit codes (provisioning.operator.session).
STATES = {0: "clean", 1: "drift", 2: "unknown"}


@dataclass
class Figures:
    """The last audit's result, as the metrics read it."""

    state: int = -1                                   # -1: none yet; else the audit's exit code
    at: float = 0.0
    counts: dict[str, int] = field(default_factory=dict)


class AuditJob:
    """A thread that runs the audit command every ``interval`` seconds (the first after one interval)."""

    def __init__(self, config: Config, interval: float, *, alerts: Alerts | None = None,
                 python: str = sys.executable) -> None:
        self.interval = interval
        self.alerts = alerts
        self.argv = [python, "-m", "provisioning", "audit", "--json", "-c", str(config.path)]
        if config.global_path is not None:
            self.argv += ["-g", str(config.global_path)]
        self.figures = Figures()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._process: subprocess.Popen | None = None

    def start(self) -> None:
        log.info("the daemon audits this host every %g s (provisioning-daemon audit; AUDIT_INTERVAL)", self.interval)
        self._thread = threading.Thread(target=self._run, name="audit", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        process = self._process
        if process is not None and process.poll() is None:
            process.terminate()
        if self._thread is not None:
            self._thread.join(STOP_GRACE + 5)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.once()
            except Exception:  # noqa: BLE001 - the audit must not take the daemon down; the log says why
                log.exception("the daemon's audit failed; tried again in %g s", self.interval)

    def once(self) -> Figures:
        """Run one audit and take in its result."""
        answer = self._audit()
        if answer is None:
            return self.figures
        before = self.figures
        counts = {str(k): int(v) for k, v in (answer.get("counts") or {}).items()}
        self.figures = Figures(int(answer.get("exit_code", 2)), time.time(), counts)
        summary = str(answer.get("summary", ""))
        (log.info if self.figures.state == 0 else log.warning)("audit: %s", summary)
        if self.figures.state != 2 and counts != before.counts and (counts or before.state == 1):
            self._mail(answer, summary)
        return self.figures

    def _audit(self) -> dict[str, Any] | None:
        self._process = subprocess.Popen(self.argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                         stdin=subprocess.DEVNULL)
        out, err = self._process.communicate()
        code, self._process = self._process.returncode, None
        if self._stop.is_set():
            return None
        try:
            return json.loads(out)
        except ValueError:
            tail = " / ".join(line for line in err.decode(errors="replace").splitlines()[-3:] if line.strip())
            log.error("the daemon's audit ended with %s and said no result: %s", code, tail or "nothing")
            self.figures = Figures(2, time.time(), self.figures.counts)
            return None

    def _mail(self, answer: dict[str, Any], summary: str) -> None:
        if self.alerts is None:
            return
        findings = answer.get("findings") or []
        lines = [f"{f['kind']} {f['subject']}: {f['detail']}" for f in findings[:DIGEST_LINES]]
        if len(findings) > DIGEST_LINES:
            lines.append(f"... and {len(findings) - DIGEST_LINES} more: provisioning-daemon audit lists them all")
        subject = f"audit: {len(findings)} finding(s) of drift" if findings else "audit: no drift any more"
        self.alerts.warning(subject, "\n".join([summary, "", *lines]))

"""SIGHUP: reload what can change without a reconnect, and reopen the logs.

The signal handler only sets a flag (Daemon.request_reload); the main loop
calls a ``Reloader`` between two rounds, so nothing here races the work.

What a reload does:

1. reopens the logs: syslog connects again, the log file of a daemon
   detached without syslog ([Service] LOG_FILE) is opened again by its name
   (after logrotate moved it);
2. reads both files again and validates them exactly as at start. A file
   that no longer validates is logged with every problem, and everything
   stays as it was (the next restart would refuse it: fix it first);
3. applies the log levels (LOG_DEBUG, LOG_INFO, LOG_WARNING, LOG_ERR, of
   the service file and of Global.conf; ``-d`` keeps debug on) and the
   [Mail] settings of Global.conf (a new server, addresses, TLS, password,
   WANTINFOMAIL; mail still waiting goes out through the new server);
4. names every other key that changed (the specs mark those a reload applies
   with ``reload=True``, next to the key): it needs a restart ([Database],
   [Service], [Gateway], the plugin's section, ENVIRONMENT, Global.conf's
   SLEEP/ATTEMPTS, and turning mail alerts on or off), and the daemon goes
   on with the value it started with.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from provisioning.base import log as logs
from provisioning.config import resources
from provisioning.config.specdoc import reloadable
from provisioning.runtime import startup
from provisioning.config.loader import Config, unknown_keys
from provisioning.alerts.mail import Alerts, describe_settings
from provisioning.alerts.mailer import MailSettings

log = logging.getLogger(__name__)



def reloaded() -> set[tuple[str, str, str]]:
    """(file, section, KEY) that a reload applies: marked ``reload=True`` in the core's specs (config.specdoc).
    A plugin's keys always need a restart: its start-up hook reads them once."""
    return ({("service", *key) for key in reloadable(resources.configspec_text("service.spec"))}
            | {("Global.conf", *key) for key in reloadable(resources.configspec_text("global.spec"))})


class Reloader:
    """What SIGHUP does, for one daemon (called by its main loop)."""

    def __init__(self, config: Config, *, debug: bool = False, alerts: Alerts | None = None,
                 dry_run: bool = False) -> None:
        self.started = config            # what the keys that need a restart stay at
        self.current = config
        self.debug = debug
        self.alerts = alerts
        self.dry_run = dry_run

    def __call__(self) -> bool:
        """Reload; True when the files validated and their reloadable settings apply."""
        logs.reopen()
        path = self.started.path
        global_arg = str(self.started.global_path) if self.started.global_path else None
        log.info("SIGHUP: logs reopened; reading %s and %s again", path, global_arg or "the Global.conf found")
        loaded = startup.load(Path(path), global_arg)
        problems = list(loaded.problems)
        if "*" not in loaded.config.invalid_sections:
            problems += startup.core_checks(loaded.config, folders=False)
            # As at a start: a file the next start would refuse is not taken now either.
            problems += unknown_keys(loaded.config) if loaded.manager is not None else []
        if problems or loaded.manager is None:
            for problem in problems:
                log.error("SIGHUP: %s", problem)
            log.error("SIGHUP: %d configuration problem(s): nothing reloaded, the settings in use are kept",
                      len(problems))
            return False
        new = loaded.config
        flags = startup.level_flags(new, debug=self.debug)
        logs.set_levels(flags)
        self._mail(new)
        restart = needs_restart(self.started, new)
        if restart:
            log.warning("SIGHUP: changed, but taking effect only at the next restart: %s", ", ".join(restart))
        self.current = new
        log.info("SIGHUP: reloaded: log levels debug=%s info=%s warning=%s error=%s; %s", int(flags.debug),
                 int(flags.info), int(flags.warning), int(flags.error),
                 describe_settings(self.alerts.settings) if self.alerts is not None else "no mail alerts")
        return True

    def _mail(self, new: Config) -> None:
        settings = MailSettings.from_section(new.mail_section())
        if self.alerts is None:
            if settings.sendto and not self.dry_run:
                log.warning("SIGHUP: [Mail] SENDTO is set now; turning mail alerts on needs a restart")
            return
        if not settings.sendto:
            log.warning("SIGHUP: [Mail] SENDTO is empty now; turning mail alerts off needs a restart "
                        "(they still go to %s)", ", ".join(self.alerts.settings.sendto))
            return
        if settings != self.alerts.settings:
            self.alerts.update(settings)
            log.info("SIGHUP: [Mail] changed: %s", describe_settings(settings))


def needs_restart(old: Config, new: Config) -> list[str]:
    """``[Section] KEY`` (of the service file or Global.conf) whose value changed and that only a
    restart applies."""
    applied = reloaded()
    changed = []
    for label, before, after in (("service", old.service, new.service), ("Global.conf", old.global_, new.global_)):
        prefix = "" if label == "service" else "Global.conf "
        for section in sorted(set(before) | set(after)):
            a, b = _section(before, section), _section(after, section)
            for key in sorted(set(a) | set(b)):
                if (label, section, key) in applied:
                    continue
                if a.get(key) != b.get(key):
                    changed.append(f"{prefix}[{section}] {key}")
    return changed


def _section(config: Any, name: str) -> dict[str, Any]:
    value = config.get(name)
    return dict(value) if hasattr(value, "keys") else {}

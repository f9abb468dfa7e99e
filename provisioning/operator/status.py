"""provisioning-daemon status: how the daemon is doing, for people and for monitoring.

Three sources, all read only:

- the host: whether a daemon holds the lock (provisioning.operator.lockholder), its
  PID and start time;
- the daemon's position: the newest CSN of its cookie (COOKIE_FILE or the
  store, whichever is newer) against the provider's contextCSN;
- the directory: the requests of SERVICE_SUBTREE that this host serves
  (the plugin's ``provisioning_owns``), by stage (provisioning.engine.requests),
  those it leaves to other hosts (counted and named, with the entry's host
  and ENVIRONMENT: a host misspelt by a letter must not look like silence),
  and the plugin's own details (``provisioning_status``);
- with TRANSPORTAPI = CLISSH, the gateway as the daemon last recorded it in
  the store: answering or out of reach (since when, why), and when it last
  answered;
- the plugin's warnings (``provisioning_warnings``);
- the store: LDAP-mode failures, removals the deletion brake holds, and
  claims of another daemon made through another provider (a WARNING while
  the last one is less than an hour old: an HA pair with two SERVER lists).

The lag is the provider's newest contextCSN minus the cookie's CSN (per
server id), counted only while SERVICE_SUBTREE holds a change the cookie
does not cover: contextCSN moves with every change anywhere in the
database, and a daemon that has seen every change of its subtree is not
behind, however old its cookie.

The exit code and the first line follow the monitoring-plugin convention
(Nagios, Icinga): 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN, then
``PROVISIONING STATE - summary | perfdata``; the lines after it list the
details.
"""
from __future__ import annotations

import argparse
import datetime as dt
import enum
import json
import sqlite3
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

from provisioning.runtime import factory, startup
from provisioning.backend.cookie import CookieError, CookieFile, by_sid, cookie_csns, covered, csn_sid
from provisioning.backend.ldap import BindRefused, Directory, DirectoryError, DirectoryUnavailable, LdapSettings
from provisioning.config.loader import Config
from provisioning.base.files import UnsafeFile, check_private
from provisioning.operator.lockholder import Holder, holder
from provisioning.base.log import escape
from provisioning.engine.requests import OPEN_FILTER, Request, Stage, classify
from provisioning.operator.returnvalues import describe, meanings
from provisioning.hooks.service import Service
from provisioning.base.stdout import quiet_broken_pipe
from provisioning.transport import Unreachable

# Requests listed per stage in the text output (--json lists all).
LISTED = 20
# Another daemon's claim through another provider makes a WARNING for this long (seconds): a pair split
# for the moments of a fail-back is over by then; one with two SERVER orders never is.
RIVALS_RECENT = 3600.0


class State(enum.IntEnum):
    OK = 0
    WARNING = 1
    CRITICAL = 2
    UNKNOWN = 3


@dataclass
class Thresholds:
    warn_lag: float = 300
    crit_lag: float = 1800
    warn_failed: int = 1
    crit_failed: int = 10
    warn_age: float = 900
    crit_age: float = 3600
    warn_gateway: float = 60
    crit_gateway: float = 300


@dataclass
class Lag:
    seconds: float | None             # None: cannot tell (no cookie yet, contextCSN unreadable)
    cookie_csn: str | None
    context_csn: str | None
    unseen: int = 0                   # entries of the subtree changed after the cookie
    note: str = ""


@dataclass
class Gateway:
    """The CLISSH gateway as the daemon last recorded it (Unix times)."""

    where: str
    up: bool
    since: float                      # of the last change between answering and away
    answered: float | None            # its last answer (None: none yet)
    why: str
    written: float                    # when the daemon recorded this

    def silent_for(self, now: dt.datetime) -> float:
        """Seconds since it last answered (since it went away, if it never did)."""
        return max(0.0, now.timestamp() - (self.answered or self.since))


@dataclass
class Status:
    service: str
    daemon: Holder
    lag: Lag | None = None
    requests: list[Request] = field(default_factory=list)
    meanings: dict[int, str] = field(default_factory=dict)
    plugin: dict[str, str] = field(default_factory=dict)
    ldap_failed: str = ""              # why the directory could not be asked
    held: int = 0                      # removals the deletion brake holds for an operator
    gateway: Gateway | None = None     # TRANSPORTAPI = CLISSH: the daemon's record of its gateway
    warnings: list[str] = field(default_factory=list)   # the plugin's (provisioning_warnings)
    rivals: dict | None = None         # another daemon's claims through another provider (Store.rivals)
    others: list[tuple[str, str]] = field(default_factory=list)   # requests of other hosts: (DN, why not ours)
    now: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.timezone.utc))

    def stage(self, stage: Stage) -> list[Request]:
        return [r for r in self.requests if r.stage is stage]

    def needing_a_person(self) -> list[Request]:
        return self.stage(Stage.FAILED) + self.stage(Stage.REFUSED)

    def oldest_open_age(self) -> float:
        """Seconds the oldest pending or in-progress request has waited (0 when there is none)."""
        times = [r.since for r in self.stage(Stage.PENDING) + self.stage(Stage.IN_PROGRESS) if r.since]
        return max(((self.now - t).total_seconds() for t in times), default=0.0)


class _Parser(argparse.ArgumentParser):
    """Usage errors are UNKNOWN (3), as a monitoring plugin's are: argparse's 2 reads as CRITICAL."""

    def error(self, message: str) -> NoReturn:
        print(f"PROVISIONING UNKNOWN - {escape(message)}")
        self.print_usage(sys.stderr)
        self.exit(State.UNKNOWN, f"{self.prog}: error: {message}\n")


def parse_args(argv: list[str]) -> argparse.Namespace:
    t = Thresholds()
    parser = _Parser(
        prog="provisioning-daemon status",
        description="Whether the daemon runs, how far behind the directory it is, and its requests. "
                    "Exit code and first line as a monitoring plugin: 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN.")
    startup.add_config_options(parser)
    parser.add_argument("--json", action="store_true", help="everything as one JSON object")
    parser.add_argument("--warn-lag", type=float, default=t.warn_lag, metavar="S",
                        help=f"WARNING when the daemon is this many seconds behind (default {t.warn_lag:g})")
    parser.add_argument("--crit-lag", type=float, default=t.crit_lag, metavar="S",
                        help=f"CRITICAL from this many seconds behind (default {t.crit_lag:g})")
    parser.add_argument("--warn-failed", type=int, default=t.warn_failed, metavar="N",
                        help=f"WARNING from N failed or refused requests (default {t.warn_failed})")
    parser.add_argument("--crit-failed", type=int, default=t.crit_failed, metavar="N",
                        help=f"CRITICAL from N failed or refused requests (default {t.crit_failed})")
    parser.add_argument("--warn-age", type=float, default=t.warn_age, metavar="S",
                        help=f"WARNING when a pending or in-progress request waits this long "
                             f"(default {t.warn_age:g})")
    parser.add_argument("--crit-age", type=float, default=t.crit_age, metavar="S",
                        help=f"CRITICAL when one waits this long (default {t.crit_age:g})")
    parser.add_argument("--warn-gateway", type=float, default=t.warn_gateway, metavar="S",
                        help=f"CLISSH: WARNING when the daemon finds the gateway out of reach and it has not "
                             f"answered for this long (default {t.warn_gateway:g})")
    parser.add_argument("--crit-gateway", type=float, default=t.crit_gateway, metavar="S",
                        help=f"CRITICAL from this long (default {t.crit_gateway:g})")
    args = parser.parse_args(argv)
    startup.config_path(parser, args)
    return args


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    thresholds = Thresholds(args.warn_lag, args.crit_lag, args.warn_failed, args.crit_failed,
                            args.warn_age, args.crit_age, args.warn_gateway, args.crit_gateway)
    loaded = startup.load(Path(args.config), args.global_config)
    if not loaded.valid:
        return _unknown(f"{args.config}: {len(loaded.problems)} configuration problem(s)", loaded.problems,
                        args.json)
    status = gather(loaded)
    state, reasons = judge(status, thresholds)
    if args.json:
        _say(json.dumps(as_json(status, state, reasons, thresholds), indent=2))
    else:
        _say("\n".join(text(status, state, reasons, thresholds)))
    return state


def _say(output: str) -> None:
    """Print; a reader that stops early (status | head -3) has what it wanted: the exit code still
    tells the state, and no traceback follows."""
    try:
        print(output, flush=True)
    except BrokenPipeError:
        quiet_broken_pipe()


def _unknown(summary: str, details: list[str], as_json: bool) -> int:
    if as_json:
        print(json.dumps({"state": State.UNKNOWN.name, "exit_code": int(State.UNKNOWN), "summary": summary,
                          "problems": details}, indent=2))
    else:
        print(f"PROVISIONING UNKNOWN - {escape(summary)}")
        for line in details:
            print(escape(line))
    return State.UNKNOWN


# ----------------------------------------------------------------- gathering

def gather(loaded: startup.Loaded) -> Status:
    """Everything status shows; an unreachable directory is noted, not raised."""
    config = loaded.config
    status = Status(loaded.plugin, holder(config.lock_file), meanings=meanings(loaded.manager))
    service = _service(loaded)
    status.plugin = _plugin_status(service)
    status.warnings = service.warnings()
    cookie, note = newest_cookie(config)
    directory = Directory(LdapSettings.from_config(config))
    try:
        directory.open()
        base = config.database.subtree
        status.lag = lag(directory, base, cookie, note)
        today = dt.datetime.now().date()       # the daemon dates requests by the local day
        for entry in directory.search(base, OPEN_FILTER):
            why = service.not_ours(entry) if entry.dn.lower() != base.lower() else ""
            if why is None:
                status.requests.append(classify(entry, today))
            elif why:
                status.others.append((entry.dn, why))
    except (DirectoryUnavailable, BindRefused, DirectoryError) as err:
        status.ldap_failed = str(err)
    finally:
        directory.close()
    status.requests += _store_failures(config)
    status.held = _held_removals(config)
    if service.ctx.transport.where is not None:
        status.gateway = _gateway_record(config)
    status.rivals = _rivals(config)
    return status


def _service(loaded: startup.Loaded) -> Service:
    config = loaded.config
    # A dry-run transport: the status hook must not change anything.
    return factory.service(loaded.manager, config, dry_run=True)


def _plugin_status(service: Service) -> dict[str, str]:
    details: dict[str, str] = {}
    try:
        for answer in service.manager.hook.provisioning_status(ctx=service.ctx):
            details.update({str(k): str(v) for k, v in (answer or {}).items()})
    except Unreachable as err:              # a BaseException: the gateway (CLISSH) is away
        details["error"] = f"the plugin's details cannot be had: {err}"
    except Exception as err:  # noqa: BLE001 - the plugin's details are not worth failing status for
        details["error"] = f"the plugin's status hook raised {type(err).__name__}: {err}"
    except Unreachable as err:
        details["error"] = f"the plugin's details cannot be read: {err}"
    return details


def newest_cookie(config: Config) -> tuple[str | None, str]:
    """The newer of COOKIE_FILE and the store's cookie, and a note when one cannot be read."""
    found, notes = [], []
    try:
        found.append(CookieFile(config.database.cookie_file).read())
    except CookieError as err:
        notes.append(str(err))
    try:
        found.append(store_cookie(config.store_file))
    except (UnsafeFile, sqlite3.Error) as err:
        notes.append(f"STORE_FILE {config.store_file}: {err}")
    cookies = [c for c in found if cookie_csns(c)]
    newest = max(cookies, key=lambda c: max(cookie_csns(c)), default=None)
    return newest, "; ".join(notes)


def store_cookie(path: Path) -> str | None:
    """The store's cookie, read without writing anything (and without taking it for immutable)."""
    check_private(path)
    if not path.exists():
        return None
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        row = db.execute("SELECT value FROM meta WHERE key='cookie'").fetchone()
    except sqlite3.OperationalError:
        return None                     # no meta table yet: nothing acknowledged
    finally:
        db.close()
    return row[0] if row else None


def lag(directory: Directory, base: str, cookie: str | None, note: str = "") -> Lag:
    """How far behind the provider the cookie is, counted only if the subtree changed after it."""
    context = directory.context_csns(base)
    newest_context = max(context, default=None)
    if not cookie_csns(cookie):
        return Lag(None, None, newest_context, note=note or "no cookie yet: the daemon never finished a "
                                                            "synchronisation")
    mine = by_sid(cookie_csns(cookie))
    since = min(cookie_csns(cookie))
    changed = [e.csn for e in directory.search(base, f"(entryCSN>={since})", ["entryCSN"]) if e.csn]
    unseen = [csn for csn in changed if not covered(csn, cookie)]
    if not unseen:
        return Lag(0.0, max(mine.values()), newest_context, 0, note)
    if not context:
        return Lag(None, max(mine.values()), None, len(unseen),
                   "the provider's contextCSN cannot be read (ACL?): cannot tell how far behind")
    newest_mine = max(mine.values())
    behind = 0.0
    for sid, theirs in by_sid(context).items():
        if sid in {csn_sid(c) for c in unseen}:
            behind = max(behind, (csn_time(theirs) - csn_time(mine.get(sid, newest_mine))).total_seconds())
    return Lag(max(behind, 0.0), newest_mine, newest_context, len(unseen), note)


def csn_time(csn: str) -> dt.datetime:
    stamp = csn.split("#", 1)[0].rstrip("Z")
    seconds, _, fraction = stamp.partition(".")
    at = dt.datetime.strptime(seconds, "%Y%m%d%H%M%S").replace(tzinfo=dt.timezone.utc)
    return at + dt.timedelta(microseconds=int((fraction or "0")[:6].ljust(6, "0")))


def _store_failures(config: Config) -> list[Request]:
    """Hooks that failed in LDAP mode (the directory does not show those): from the store."""
    rows = _store_rows(config.store_file, "SELECT dn, failed FROM entries WHERE failed IS NOT NULL")
    return [Request(dn, Stage.FAILED, f"{verb} hook failed (LDAP mode)", None) for dn, verb in rows]


def _held_removals(config: Config) -> int:
    """How many removals the deletion brake holds (provisioning-daemon deletions lists them)."""
    rows = _store_rows(config.store_file, "SELECT count(*) FROM held")
    return rows[0][0] if rows else 0


def _gateway_record(config: Config) -> Gateway | None:
    """The gateway as the daemon last recorded it in the store (None: never)."""
    rows = _store_rows(config.store_file, "SELECT value FROM meta WHERE key='gateway'")
    if not rows:
        return None
    try:
        record = json.loads(rows[0][0])
        return Gateway(str(record["where"]), bool(record["up"]), float(record["since"]),
                       None if record["answered"] is None else float(record["answered"]), str(record["why"]),
                       float(record["written"]))
    except (ValueError, KeyError, TypeError):
        return None


def _rivals(config: Config) -> dict | None:
    """The record of another daemon's claims made through another provider (see Router._rival)."""
    rows = _store_rows(config.store_file, "SELECT value FROM meta WHERE key='rivals'")
    try:
        return json.loads(rows[0][0]) if rows else None
    except ValueError:
        return None


def rival_age(status: Status) -> float | None:
    """Seconds since another daemon last claimed through another provider (None: never)."""
    last = (status.rivals or {}).get("last")
    return None if last is None else status.now.timestamp() - last


def _store_rows(path: Path, sql: str) -> list[tuple]:
    """Rows from the store, read only; none when it is missing, unsafe or unreadable (an earlier version)."""
    try:
        check_private(path)
        if not path.exists():
            return []
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            return db.execute(sql).fetchall()
        finally:
            db.close()
    except (UnsafeFile, sqlite3.Error):
        return []


# ------------------------------------------------------------------ judging

def judge(status: Status, t: Thresholds) -> tuple[State, list[str]]:
    """The monitoring state and the reasons for it (worst first)."""
    critical, warning = [], []
    if status.ldap_failed:
        return State.UNKNOWN, [f"cannot ask the directory: {status.ldap_failed}"]
    if not status.daemon.running:
        critical.append("daemon not running")
    if status.held:
        critical.append(f"{status.held} removal(s) held by the deletion brake (provisioning-daemon deletions)")
    if status.lag is not None and status.lag.seconds is None:
        warning.append(f"lag unknown ({status.lag.note})")
    elif status.lag is not None:
        _grade(status.lag.seconds, t.warn_lag, t.crit_lag, f"{status.lag.seconds:.0f} s behind", warning, critical)
    age = rival_age(status)
    if age is not None and age < RIVALS_RECENT:
        warning.append(f"another daemon claimed through another provider {age:.0f} s ago (HA pair: same SERVER "
                       f"list on both)")
    person = len(status.needing_a_person())
    _grade(person, t.warn_failed, t.crit_failed, f"{person} failed or refused", warning, critical)
    age = status.oldest_open_age()
    _grade(age, t.warn_age, t.crit_age, f"a request waits for {age:.0f} s", warning, critical)
    gateway = status.gateway
    if gateway is not None and not gateway.up and status.daemon.running:
        silent = gateway.silent_for(status.now)
        _grade(silent, t.warn_gateway, t.crit_gateway,
               f"the gateway {gateway.where} out of reach, no answer for {silent:.0f} s", warning, critical)
    warning += status.warnings
    if critical:
        return State.CRITICAL, critical + warning
    if warning:
        return State.WARNING, warning
    return State.OK, []


def _grade(value: float, warn: float, crit: float, what: str, warning: list[str], critical: list[str]) -> None:
    if crit > 0 and value >= crit:
        critical.append(what)
    elif warn > 0 and value >= warn:
        warning.append(what)


# ------------------------------------------------------------------ output

def perfdata(status: Status, t: Thresholds) -> str:
    lag_value = "U" if status.lag is None or status.lag.seconds is None else f"{status.lag.seconds:.0f}"

    def known(value: str) -> str:
        return "U" if status.ldap_failed else value     # U: unknown, in the monitoring-plugin convention

    return " ".join([
        f"lag={lag_value}s;{t.warn_lag:g};{t.crit_lag:g};0",
        f"pending={known(str(len(status.stage(Stage.PENDING))))};;;0",
        f"in_progress={known(str(len(status.stage(Stage.IN_PROGRESS))))};;;0",
        f"failed={known(str(len(status.needing_a_person())))};{t.warn_failed};{t.crit_failed};0",
        f"dated={known(str(len(status.stage(Stage.DATED))))};;;0",
        f"oldest={known(f'{status.oldest_open_age():.0f}')}s;{t.warn_age:g};{t.crit_age:g};0",
        f"held={status.held};;1;0",
        f"other_hosts={known(str(len(status.others)))};;;0",
    ] + ([f"gateway_silence={status.gateway.silent_for(status.now):.0f}s;{t.warn_gateway:g};{t.crit_gateway:g};0"]
         if status.gateway is not None else []))


def summary(status: Status, state: State, reasons: list[str]) -> str:
    counts = (f"{len(status.stage(Stage.PENDING))} pending, {len(status.stage(Stage.IN_PROGRESS))} in progress, "
              f"{len(status.needing_a_person())} failed, {len(status.stage(Stage.DATED))} dated")
    lead = "; ".join(reasons) if reasons else status.daemon.describe()
    if status.ldap_failed:
        return f"{status.service}: {lead}"
    return f"{status.service}: {lead}; {counts}"


def text(status: Status, state: State, reasons: list[str], t: Thresholds) -> list[str]:
    lines = [f"PROVISIONING {state.name} - {summary(status, state, reasons)} | {perfdata(status, t)}",
             f"daemon: {status.daemon.describe()}"]
    if status.lag is not None:
        lines.append(f"lag: {_lag_text(status.lag)}")
    if status.ldap_failed:
        # Not "pending: 0": nobody knows. Only what the store holds is known.
        lines.append(f"requests: unknown, the directory cannot be asked ({status.ldap_failed})")
        stages: tuple[tuple[Stage, str], ...] = ((Stage.FAILED, "failed hooks (MODUS LDAP, from the store)"),)
    else:
        stages = ((Stage.PENDING, "pending"), (Stage.IN_PROGRESS, "in progress"), (Stage.FAILED, "failed"),
                  (Stage.REFUSED, "refused"), (Stage.DATED, "dated for later"))
    for stage, title in stages:
        found = status.stage(stage)
        if not found and (stage is Stage.REFUSED or status.ldap_failed):
            continue
        lines.append(f"{title}: {len(found)}")
        lines += [f"  {_request_text(r, status)}" for r in found[:LISTED]]
        if len(found) > LISTED:
            lines.append(f"  ... and {len(found) - LISTED} more (--json lists all)")
    if status.others:
        lines.append(f"requests of other hosts, left untouched: {len(status.others)}")
        lines += [f"  {dn}: {why}" for dn, why in status.others[:LISTED]]
        if len(status.others) > LISTED:
            lines.append(f"  ... and {len(status.others) - LISTED} more (--json lists all)")
    if status.gateway is not None:
        lines.append(f"gateway: {_gateway_text(status.gateway, status.now)}")
    if status.held:
        lines.append(f"deletion brake: {status.held} removal(s) held for an operator "
                     f"(provisioning-daemon deletions -c CONFIG --list)")
    if status.rivals:
        r = status.rivals
        lines.append(f"claims of another daemon through another provider: {r['count']}, the last at "
                     f"{dt.datetime.fromtimestamp(r['last'], dt.timezone.utc):%Y-%m-%d %H:%M:%S} UTC ({r['text']}); "
                     f"the daemons of an HA pair need the same SERVER list")
    if status.plugin:
        lines.append(f"{status.service}: " + ", ".join(f"{k} {v}" for k, v in status.plugin.items()))
    return [escape(line) for line in lines]


def _gateway_text(gateway: Gateway, now: dt.datetime) -> str:
    recorded = dt.datetime.fromtimestamp(gateway.written, dt.timezone.utc)
    last = "never answered" if gateway.answered is None else f"last answer {gateway.silent_for(now):.0f} s ago"
    if gateway.up:
        return f"{gateway.where}: answers ({last}; recorded by the daemon at {recorded:%Y-%m-%d %H:%M:%S} UTC)"
    since = dt.datetime.fromtimestamp(gateway.since, dt.timezone.utc)
    return (f"{gateway.where}: out of reach since {since:%Y-%m-%d %H:%M:%S} UTC ({last}): {gateway.why}; "
            "requests wait for it")


def _lag_text(lag_: Lag) -> str:
    if lag_.seconds is None:
        return f"unknown: {lag_.note}"
    detail = f"cookie CSN {lag_.cookie_csn}, provider contextCSN {lag_.context_csn}"
    if not lag_.unseen:
        return f"0 s: every change of the subtree is covered by the cookie ({detail})"
    return f"{lag_.seconds:.0f} s, {lag_.unseen} changed entr(y/ies) not seen yet ({detail})"


def _request_text(r: Request, status: Status) -> str:
    since = f" since {r.since:%Y-%m-%d %H:%M:%S} UTC" if r.since else ""
    if r.stage is Stage.IN_PROGRESS:
        return f"{r.dn}: {r.mode}, claimed by {r.owner}{since}"
    if r.stage in (Stage.FAILED, Stage.REFUSED) and r.return_value is not None:
        return f"{r.dn}: {r.mode}, return value {r.return_value} ({describe(r.return_value, status.meanings)}){since}"
    if r.stage is Stage.DATED:
        return f"{r.dn}: {r.mode} on {r.due:%Y-%m-%d}"
    return f"{r.dn}: {r.mode}{since}"


def as_json(status: Status, state: State, reasons: list[str], t: Thresholds) -> dict[str, Any]:
    def listed(stage: Stage) -> list[dict[str, object]]:
        out = []
        for r in status.stage(stage):
            item = r.as_dict()
            if r.return_value is not None:
                item["meaning"] = describe(r.return_value, status.meanings)
            out.append(item)
        return out

    lag_ = status.lag
    return {
        "state": state.name, "exit_code": int(state), "summary": summary(status, state, reasons),
        "service": status.service,
        "daemon": {"running": status.daemon.running, "pid": status.daemon.pid,
                   "since": status.daemon.since.isoformat() if status.daemon.since else None,
                   "note": status.daemon.note},
        "lag": None if lag_ is None else {"seconds": lag_.seconds, "cookie_csn": lag_.cookie_csn,
                                          "context_csn": lag_.context_csn, "unseen_entries": lag_.unseen,
                                          "note": lag_.note},
        "ldap_error": status.ldap_failed or None,
        # null while the directory cannot be asked: unknown, not 0.
        "counts": None if status.ldap_failed else {stage.value: len(status.stage(stage)) for stage in Stage},
        "requests": {stage.value: listed(stage) for stage in Stage if stage is not Stage.OTHER},
        "oldest_open_seconds": status.oldest_open_age(),
        "deletions_held": status.held,
        "gateway": None if status.gateway is None else {
            **vars(status.gateway), "seconds_since_answer": status.gateway.silent_for(status.now)},
        "rival_claims": status.rivals,
        "other_hosts": None if status.ldap_failed else [{"dn": dn, "why": why} for dn, why in status.others],
        "plugin": status.plugin,
        "plugin_warnings": status.warnings,
        "thresholds": vars(t),
    }


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""Fast unit tests of the core: config, cookie, protocol decisions, LDIF, logging, lock.

The transports are tested in t/test_transport.py (both of them, the same tests).

No server is started; files live in tmp_path.
"""
import base64
import datetime as dt
import logging
import math
import os
import stat
from types import SimpleNamespace

import ldap
import pytest

from provisioning.config import loader as cfgmod
from provisioning.backend.cookie import DEFAULT_CSN, cookie_csn
from provisioning.backend.ldap import DirectoryError, DirectoryUnavailable, LdapSettings, SyncStream
from provisioning.engine.daemon import Daemon
from provisioning.base.secret import Secret
from provisioning.engine.claims import Owner, Owners
from provisioning.base.clock import Clock, generalized_time
from provisioning.base.codes import ReturnValue
from provisioning.base.entry import Entry
from provisioning.operator.ldifload import parse_ldif
from provisioning.runtime.lock import AlreadyLocked, PidLock
from provisioning.base.log import LevelFlags
from provisioning.base.log import setup as log_setup
from provisioning.engine.lowwater import OpenEvents
from provisioning.engine.protocol import Verdict, decide, parse_execution_date

# ------------------------------------------------------------------ config

DATABASE = {"BACKEND": "LDAP", "SERVER": "ldap://ldap.example.org", "ADMIN_USER": "cn=Manager,dc=x,dc=y",
            "ADMIN_PASSWORD": "s3cret", "SERVICE_SUBTREE": "ou=backup,dc=x,dc=y",
            "COOKIE_FILE": "/var/lib/provisioning/test.cookie"}
SERVICE = {"MODUS": "selfcare", "TRANSPORTAPI": "LocalCLI", "SERVICE": "Backup", "TYPE": "Rsnapshot"}


def write_service(tmp_path, database=None, service=None, extra="", name="Service.conf"):
    sections = {"Database": {**DATABASE, **(database or {})}, "Service": {**SERVICE, **(service or {})}}
    lines = []
    for section, values in sections.items():
        lines.append(f"[{section}]")
        lines += [f"{k} = {v}" for k, v in values.items() if v is not None]
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n" + extra)
    return path


def problems_of(path, global_path=None):
    with pytest.raises(cfgmod.ConfigError) as err:
        cfgmod.load(path, global_path)
    return err.value.problems


def test_minimal_valid_config_loads_with_defaults(tmp_path):
    conf = cfgmod.load(write_service(tmp_path), None)
    assert conf.service_name == "Backup" and conf.type_name == "Rsnapshot"
    assert conf.service["Database"]["PORT"] is None
    assert conf.service["Service"]["COMMAND_TIMEOUT"] == 600
    assert conf.global_["Global"]["ATTEMPTS"] == 3
    assert conf.global_path is None                 # built-in Global.conf defaults:
    assert conf.log_flag("LOG_DEBUG") is False and conf.log_flag("LOG_INFO") is True
    assert conf.global_["Mail"]["SSL"] == "starttls"


def test_every_problem_is_reported_at_once(tmp_path):
    path = write_service(tmp_path, database={"PORT": "abc", "BACKEND": "MySQL", "SERVER": "http://x",
                                             "SERVICE_SUBTREE": None},
                         service={"MODUS": "foo"})
    problems = problems_of(path)
    assert len(problems) == 5 and all(p.startswith(f"{path}: ") for p in problems)

    def one(section, key):
        found = [p for p in problems if f"[{section}] {key}:" in p]
        assert len(found) == 1, (section, key, problems)
        return found[0]

    assert "abc" in one("Database", "PORT")
    assert "MySQL" in one("Database", "BACKEND") and "LDAP" in one("Database", "BACKEND")
    assert "http://x" in one("Database", "SERVER")
    assert "missing" in one("Database", "SERVICE_SUBTREE")
    modus = one("Service", "MODUS")
    assert "foo" in modus and "selfcare, LDAP, combined" in modus


def test_values_with_commas_stay_whole_strings(tmp_path):
    path = write_service(tmp_path, database={"DEFAULT_COOKIE": "rid=001,csn="})
    conf = cfgmod.load(path, None)
    assert conf.service["Database"]["ADMIN_USER"] == "cn=Manager,dc=x,dc=y"
    assert conf.service["Database"]["DEFAULT_COOKIE"] == "rid=001,csn="


def test_choices_are_case_insensitive_and_canonical(tmp_path):
    path = write_service(tmp_path, database={"BACKEND": "ldap"},
                         service={"MODUS": "SELFCARE", "TRANSPORTAPI": "localcli"})
    conf = cfgmod.load(path, None)
    assert conf.service["Service"]["MODUS"] == "selfcare"
    assert conf.service["Service"]["TRANSPORTAPI"] == "LocalCLI"
    assert conf.service["Database"]["BACKEND"] == "LDAP"


@pytest.mark.parametrize("server, expected", [
    ("ldap://h", ["ldap://h:1389"]), ("ldaps://h/", ["ldaps://h:1389/"]), ("ldap://h:389", ["ldap://h:389"]),
    ("ldap://[::1]", ["ldap://[::1]:1389"]), ("ldap://[::1]:389", ["ldap://[::1]:389"]),
    ("ldapi://%2Frun%2Fslapd.sock", ["ldapi://%2Frun%2Fslapd.sock"]),
    ("ldap://a  ldaps://b:636 ldapi:///", ["ldap://a:1389", "ldaps://b:636", "ldapi:///"]),
])
def test_ldap_uris_fill_in_port(tmp_path, server, expected):
    conf = cfgmod.load(write_service(tmp_path, database={"SERVER": server, "PORT": "1389"}), None)
    assert conf.ldap_uris() == expected


def test_log_flag_service_wins_else_global_conf(tmp_path):
    glob = tmp_path / "Global.conf"
    glob.write_text("[Global]\nLOG_DEBUG = 1\nLOG_INFO = 0\n")
    path = write_service(tmp_path, extra="[Global]\nLOG_DEBUG = 0\n")
    conf = cfgmod.load(path, glob)
    assert conf.log_flag("LOG_DEBUG") is False      # service file
    assert conf.log_flag("LOG_INFO") is False       # Global.conf
    assert conf.log_flag("LOG_WARNING") is True     # Global.conf's default
    assert conf.global_path == glob


def test_unreadable_files_are_named(tmp_path):
    missing = tmp_path / "nope.conf"
    problems = problems_of(missing, tmp_path / "Global-missing.conf")
    assert any(str(missing) in p and "cannot read" in p for p in problems)
    assert any("Global-missing.conf" in p and "cannot read" in p for p in problems)


def test_ini_syntax_error_names_file_and_line(tmp_path):
    path = tmp_path / "broken.conf"
    path.write_text("[Database]\nthis is not a key\n")
    problems = problems_of(path)
    assert any(p.startswith(f"{path}: line 2") for p in problems)


def test_global_conf_errors_name_global_file(tmp_path):
    glob = tmp_path / "Global.conf"
    glob.write_text("[Mail]\nSSL = tls\n")
    problems = problems_of(write_service(tmp_path), glob)
    assert len(problems) == 1
    assert problems[0].startswith(f"{glob}: [Mail] SSL:") and "starttls, ssl, none" in problems[0]


def test_unknown_keys_are_reported(tmp_path):
    glob = tmp_path / "Global.conf"
    glob.write_text("[Global]\nLOG_CHATTY = 1\n")
    path = write_service(tmp_path, database={"FOO": "bar"}, extra="[Extra]\nX = 1\n")
    found = cfgmod.unknown_keys(cfgmod.load(path, glob))
    assert any(str(path) in f and "[Database] FOO" in f for f in found)
    assert any(str(path) in f and "Extra" in f for f in found)
    assert any(str(glob) in f and "[Global] LOG_CHATTY" in f for f in found)
    assert cfgmod.unknown_keys(cfgmod.load(write_service(tmp_path, name="clean.conf"), None)) == []


# ------------------------------------------------------------------ cookie

OLD, MID, NEW = (f"20{y}0101000000.000000Z#000000#00{n}#000000" for y, n in (("10", 1), ("23", 2), ("24", 3)))


@pytest.mark.parametrize("cookie, csn", [
    (None, DEFAULT_CSN), ("", DEFAULT_CSN), ("rid=001,csn=", DEFAULT_CSN),
    (f"rid=001,sid=fe5,csn={NEW}", NEW), (f"rid=001,csn={NEW};{MID}", MID), (f"rid=001,csn={MID};{NEW}", MID),
    (f"rid=001,delcsn={OLD},csn={NEW}", NEW), (f"rid=001,delcsn={OLD}", DEFAULT_CSN),
])
def test_cookie_csn(cookie, csn):
    assert cookie_csn(cookie) == csn


class _Position:
    def __init__(self, current: str | None) -> None:
        self.current = current
        self.acknowledged: list[str] = []

    def reset(self) -> None:
        self.current = None

    def acknowledge(self, cookie: str) -> None:
        self.acknowledged.append(cookie)
        self.current = cookie


class _Router:
    def __init__(self, adopt: str | None, own: list[str]) -> None:
        self.adopt, self.own = adopt, list(own)

    def own_csns(self) -> list[str]:
        return list(self.own)

    def forget_own_writes(self, csns: list[str]) -> None:
        self.own = [csn for csn in self.own if csn not in csns]


def _checking(uri: str, context: list[str] | Exception, session_server: str | None,
              current: str | None = f"rid=001,csn={NEW}", adopt: str | None = None,
              own: tuple[str, ...] = ()) -> Daemon:
    """A daemon (stubs around it) about to compare its cookie on ``uri`` after a session on ``session_server``."""
    def context_csns(base: str) -> list[str]:
        if isinstance(context, Exception):
            raise context
        return context
    daemon = Daemon(directory=SimpleNamespace(uri=uri, context_csns=context_csns), stream=None,
                    position=_Position(current), store=None, router=_Router(adopt, own),
                    executor=None, startup=None, operation=None, base="ou=backup,dc=x,dc=y")
    daemon._session_server = session_server
    daemon._check_cookie()
    return daemon


@pytest.mark.parametrize("context", [[], DirectoryError("refused")], ids=["hidden", "refused"])
def test_a_cookie_that_cannot_be_checked_is_trusted_only_on_the_server_it_came_from(context, caplog):
    # The same server as the session before: its own position, resumed.
    assert _checking("ldap://b/", context, session_server="ldap://b/").position.current == f"rid=001,csn={NEW}"
    assert "refreshing from scratch" not in caplog.text
    # Another server (a failover), or the first session of a run: a full refresh.
    assert _checking("ldap://b/", context, session_server="ldap://a/").position.current is None
    assert "the contextCSN of ldap://b/ cannot be read (ACL?)" in caplog.text
    assert "cookie (from ldap://a/)" in caplog.text
    assert _checking("ldap://b/", context, session_server=None).position.current is None
    # A COOKIE_FILE to adopt (an upgrade, no store yet) is kept: dropping it would redo every account.
    adopting = _checking("ldap://b/", context, session_server=None, current=None, adopt=f"rid=001,csn={MID}")
    assert adopting.router.adopt == f"rid=001,csn={MID}"


def test_a_cookie_checked_against_a_readable_contextcsn_is_judged_by_it_on_any_server():
    assert _checking("ldap://b/", [NEW], session_server="ldap://a/").position.current == f"rid=001,csn={NEW}"
    assert _checking("ldap://b/", [MID], session_server="ldap://b/").position.current is None   # behind


def test_a_provider_without_this_daemons_last_writes_gets_a_full_refresh(caplog):
    # The cookie stands before our claim and outcome (their echoes had not come back when the
    # provider we wrote to died); the one we fail over to is level with the cookie, without them.
    added, outcome = (f"20260101000000.00000{n}Z#000000#00a#000000" for n in (1, 2))
    failed_over = _checking("ldap://b/", [added], session_server="ldap://a/", current=f"rid=001,csn={added}",
                            own=(outcome,))
    assert failed_over.position.current is None
    assert f"the provider lacks 1 write(s) of this daemon, the newest {outcome}" in caplog.text
    # Still counted until the refresh's first cookie: the reset is in memory only, and a restart
    # before that cookie must find the write missing again.
    assert failed_over.router.own == [outcome]
    failed_over._cookies.append((1, f"rid=001,csn={added}"))
    failed_over._advance()
    assert failed_over.router.own == []                    # judged by that refresh, not counted again
    # A provider that has them (the same one after a cut, or one it replicated to): resumed.
    resumed = _checking("ldap://b/", [outcome], session_server="ldap://a/", current=f"rid=001,csn={added}",
                        own=(outcome,))
    assert resumed.position.current == f"rid=001,csn={added}" and resumed.router.own == [outcome]


def test_every_cookie_behind_the_low_water_mark_is_acknowledged_not_only_the_newest():
    """In the persist phase a cookie names the CSN of its own change only: each one counts."""
    daemon = _checking("ldap://a/", [NEW], session_server="ldap://a/")
    cookies = ["rid=001,csn=20260101000000.000001Z#000000#00a#000000",
               "rid=001,csn=20260101000000.000002Z#000000#00b#000000",
               "rid=001,csn=20260101000000.000003Z#000000#00a#000000"]
    daemon._cookies.extend(enumerate(cookies, start=1))
    daemon._advance()
    assert daemon.position.acknowledged == cookies


def test_the_sync_search_opens_on_the_server_the_cookie_was_checked_on():
    """Not the first of SERVER that answers: the check would say nothing about another one."""
    settings = LdapSettings(uris=["ldap://127.0.0.1:1/", "ldap://127.0.0.1:2/"], bind_dn="cn=x", password=Secret("x"),
                            timeout=2)
    stream = SyncStream(settings, "ou=backup,dc=x,dc=y", "(objectClass=*)")
    with pytest.raises(DirectoryUnavailable) as err:
        stream.open(None, uri="ldap://127.0.0.1:2/")
    assert "127.0.0.1:2" in str(err.value) and "127.0.0.1:1" not in str(err.value)


# ---------------------------------------------------------------- protocol

TODAY = dt.date(2026, 3, 15)
W, P, R, I, RES, WA = (Verdict.WORK, Verdict.POSTPONE, Verdict.REFUSE, Verdict.IGNORE, Verdict.RESUME,
                       Verdict.WATCH)
# A claim by a process of this host that no longer runs, and one by another host.
GONE_CLAIM = "claim: here 4242 20260315T080000Z"
ELSEWHERE = "claim: there 4242 20260315T083000Z"


class Now(Clock):
    """The judge's clock: 09:00 on TODAY, and a monotonic one the test moves."""

    def __init__(self, wall: dt.datetime = dt.datetime(2026, 3, 15, 9, 0, tzinfo=dt.timezone.utc)) -> None:
        self.wall, self.ticks = wall, 0.0

    def utcnow(self):
        return self.wall

    def today(self):
        return TODAY

    def monotonic(self):
        return self.ticks


def owners(lease=3600.0, directory_now="20260315090000Z"):
    """A judge on host "here" whose directory last showed ``directory_now`` (None: it showed nothing yet)."""
    judge = Owners(lease, Now(), host="here", pid=1, alive=lambda pid: False)
    judge.directory.saw(generalized_time(directory_now))
    return judge
BAD_DATE, UNKNOWN, ACTIVE = (ReturnValue.INVALID_EXECUTION_DATE, ReturnValue.UNKNOWN_MODE,
                             ReturnValue.DELETE_WHILE_ACTIVE)


def entry(**attrs):
    names = {"mode": "sstProvisioningMode", "state": "sstProvisioningState",
             "date": "sstProvisioningExecutionDate", "ret": "sstProvisioningReturnValue",
             "active": "sstIsActive", "claim": "sstProvisioningExecutionTime"}
    return Entry.from_ldap("uid=1,ou=backup,dc=x", {names.get(k, k): [v.encode()] for k, v in attrs.items()})


def test_parse_execution_date():
    assert parse_execution_date("0") is None
    assert parse_execution_date(" 20260316 ") == dt.date(2026, 3, 16)
    for bad in ("2026", "20261340", "abc", "", None):
        with pytest.raises(ValueError):
            parse_execution_date(bad)


@pytest.mark.parametrize("attrs, verdict, verb, code", [
    ({}, I, None, None),
    ({"cn": "x", "mode": "add"}, I, None, None),                  # no state
    ({"state": "0", "date": "0"}, I, None, None),                  # no mode
    ({"mode": "add", "state": "20260101T000000Z", "date": "0"}, I, None, None),
    ({"mode": "add", "state": "0", "date": "0"}, W, "add", None),
    ({"mode": "modify", "state": "0", "date": "0"}, W, "modify", None),
    ({"mode": "ADD", "state": "0", "date": "0"}, W, "add", None),
    ({"mode": "Modify", "state": " 0 ", "date": "0"}, W, "modify", None),
    ({"mode": "delete", "state": "0", "date": "0", "active": "FALSE"}, W, "delete", None),
    ({"mode": "add", "state": "0", "date": "20260315"}, W, "add", None),   # today
    ({"mode": "add", "state": "0", "date": "20260314"}, W, "add", None),   # yesterday
    ({"mode": "modify", "state": "0", "date": "2026"}, R, "modify", BAD_DATE),
    ({"mode": "modify", "state": "0", "date": "20261340"}, R, "modify", BAD_DATE),
    ({"mode": "add", "state": "0", "date": "abc"}, R, "add", BAD_DATE),
    ({"mode": "foo", "state": "0", "date": "0"}, R, None, UNKNOWN),
    ({"mode": "delete", "state": "0", "date": "0", "active": "TRUE"}, R, "delete", ACTIVE),
    ({"mode": "delete", "state": "0", "date": "0"}, R, "delete", ACTIVE),
    ({"mode": "adding", "state": "0", "date": "0", "claim": GONE_CLAIM}, RES, "add", None),
    ({"mode": "modifying", "state": "0", "date": "0", "claim": GONE_CLAIM}, RES, "modify", None),
    ({"mode": "deleting", "state": "0", "date": "0", "active": "FALSE", "claim": GONE_CLAIM}, RES, "delete", None),
    # Resuming checks what a new request checks: "deleting" written into an active entry is refused.
    ({"mode": "deleting", "state": "0", "date": "0", "claim": GONE_CLAIM}, R, "delete", ACTIVE),
    ({"mode": "modifying", "state": "0", "date": "2026", "claim": GONE_CLAIM}, R, "modify", BAD_DATE),
    ({"mode": "adding", "state": "0", "date": "20260316", "claim": GONE_CLAIM}, P, "add", None),
    # Someone else's claim is watched until its lease runs out; one without an owner too.
    ({"mode": "adding", "state": "0", "date": "0", "claim": ELSEWHERE}, WA, "add", None),
    ({"mode": "adding", "state": "0", "date": "0", "modifyTimestamp": "20260315085900Z"}, WA, "add", None),
    ({"mode": "adding", "state": "0", "date": "0", "modifyTimestamp": "20260315075900Z"}, RES, "add", None),
    ({"mode": "adding", "state": "0", "date": "0", "ret": "3"}, I, None, None),
    ({"mode": "added", "state": "0", "date": "0"}, I, None, None),
    ({"mode": "deleted", "state": "0", "date": "0"}, I, None, None),
])
def test_decide(attrs, verdict, verb, code):
    d = decide(entry(**attrs), TODAY, owners())
    assert d.verdict is verdict, d.reason
    if verdict is not I:
        assert (d.verb, d.code) == (verb, code)


@pytest.mark.parametrize("mode, active", [("add", None), ("delete", "TRUE")])
def test_future_request_is_postponed_before_other_checks(mode, active):
    attrs = {"mode": mode, "state": "0", "date": "20260316", **({"active": active} if active else {})}
    d = decide(entry(**attrs), TODAY, owners())
    assert (d.verdict, d.verb, d.due) == (P, mode, dt.date(2026, 3, 16))


@pytest.mark.parametrize("claim", ["claim: x 1 99991231T235959Z",        # the portal can write this
                                   "claim: x 1 20260315T110000Z",        # two hours after its write
                                   "claim: x 1", "claim: ", "claim: x 1 tomorrow", "claim: x -1 20260315T085900Z",
                                   "claim: x 0 20260315T085900Z", "claim: here 99999999999999999999 20260315T085900Z",
                                   "claim: x ١ 20260315T085900Z", "claim: x 1 20260315T085900Z extra",
                                   f"claim: x {'9' * 5000} 20260315T085900Z"], ids=lambda claim: claim[:40])
def test_a_claim_no_daemon_wrote_is_foreign_and_expired_without_a_traceback(claim):
    """A forged or broken claim is taken over at once: no traceback, no entry stuck behind it."""
    judge = Owners(3600, Now(), host="here", pid=1)            # the real pid check: os.kill
    claimed = entry(mode="adding", state="0", date="0", claim=claim,
                    entryCSN="20260315085900.000000Z#000000#000#000000")
    judgement = judge.judge(claimed)
    assert judgement.owner is Owner.GONE and "foreign, taken as expired" in judgement.why, judgement
    assert decide(claimed, TODAY, judge).verdict is RES


def test_a_claim_stamped_a_little_ahead_of_its_write_is_aged_by_the_directory():
    # An older daemon stamps with its own clock, which may run a little fast: not forged.
    judge = owners(lease=3600)
    claimed = entry(mode="adding", state="0", date="0", claim="claim: there 7 20260315T093000Z",
                    entryCSN="20260315085900.000000Z#000000#000#000000")
    assert judge.judge(claimed).owner is Owner.LIVE


@pytest.mark.parametrize("claimant_wall, judge_wall", [(0, 2), (-2, 0)])   # hours off the directory's clock
def test_two_daemons_whose_clocks_differ_by_more_than_the_lease_wait_out_each_others_claims(claimant_wall,
                                                                                             judge_wall):
    """A claim is aged on the directory's clock (its entryCSN), not by its stamp against the judge's clock."""
    directory = dt.datetime(2026, 3, 15, 9, 0, tzinfo=dt.timezone.utc)
    lease = 600
    a = Owners(lease, Now(directory + dt.timedelta(hours=claimant_wall)), host="backup-a", pid=10)
    judge_clock = Now(directory + dt.timedelta(hours=judge_wall))
    b = Owners(lease, judge_clock, host="backup-b", pid=20)
    # The claim reaches the directory a second later; both read the entry as it then is.
    token = a.new_token("uid=1,ou=backup,dc=x")               # the key of an entry without entryUUID
    claimed = entry(mode="adding", state="0", date="0", claim=token,
                    entryCSN="20260315090001.000000Z#000000#000#000000")
    assert a.judge(claimed).owner is Owner.MINE
    judgement = b.judge(claimed)
    assert judgement.owner is Owner.LIVE, judgement.why
    # The watch is set on the judge's own clock, a lease from now.
    assert judgement.expires == judge_clock.utcnow() + dt.timedelta(seconds=lease)
    judge_clock.ticks += lease - 1
    assert b.judge(claimed).owner is Owner.LIVE
    judge_clock.ticks += 1                               # a lease has gone by: a claimant still there gave up
    assert b.judge(claimed).owner is Owner.GONE


def test_a_claim_is_aged_by_the_newest_time_the_directory_showed():
    """After a restart, a claim older than newer entries is taken over without waiting a lease here."""
    judge = owners(lease=600, directory_now=None)
    newer = entry(uid="2", entryCSN="20260315090000.000000Z#000000#000#000000")
    claimed = entry(mode="adding", state="0", date="0", claim="claim: there 7 20260315T084000Z",
                    entryCSN="20260315084000.000000Z#000000#000#000000")
    judge.saw(newer)
    assert judge.judge(claimed).owner is Owner.GONE
    # Nothing newer seen: the claim's own write is the directory's latest known time.
    fresh = owners(lease=600, directory_now=None)
    assert fresh.judge(claimed).owner is Owner.LIVE


def test_a_claim_without_a_time_of_its_own_is_waited_out_once():
    judge = owners(lease=600)
    claimed = entry(mode="adding", state="0", date="0", claim="claim: there 7 20260315T085900Z")
    assert judge.judge(claimed).owner is Owner.LIVE
    judge.clock.ticks += 600
    assert judge.judge(claimed).owner is Owner.GONE


# -------------------------------------------------------------------- LDIF

def test_ldif_plain_entry_is_add_and_version_line_is_accepted():
    [change] = parse_ldif("version: 1\ndn: uid=a,dc=x\nobjectClass: top\nobjectClass: account\nuid: a\n")
    assert (change.dn, change.kind, change.mods) == ("uid=a,dc=x", "add", [])
    assert change.attrs == {"objectClass": [b"top", b"account"], "uid": [b"a"]}


def test_ldif_modify_operations():
    text = ("dn: uid=a,dc=x\nchangetype: modify\nreplace: mail\nmail: a@x\nmail: b@x\n-\n"
            "add: description\ndescription: d\n-\ndelete: seeAlso\n-\n")
    [change] = parse_ldif(text)
    assert change.kind == "modify"
    assert change.mods == [(ldap.MOD_REPLACE, "mail", [b"a@x", b"b@x"]),
                           (ldap.MOD_ADD, "description", [b"d"]),
                           (ldap.MOD_DELETE, "seeAlso", None)]


def test_ldif_delete_and_several_records():
    changes = parse_ldif("dn: uid=a,dc=x\nuid: a\n\n\ndn: uid=b,dc=x\nchangetype: delete\n")
    assert [(c.dn, c.kind) for c in changes] == [("uid=a,dc=x", "add"), ("uid=b,dc=x", "delete")]


def test_ldif_folded_lines_base64_and_comments():
    encoded = base64.b64encode("Zürich ".encode()).decode()
    text = (f"# a comment\ndn: uid=a,dc=\n x\ndescription: one long\n  line\nl:: {encoded}\n"
            "# another: comment\nuid: a\n")
    [change] = parse_ldif(text)
    assert change.dn == "uid=a,dc=x"
    assert change.attrs == {"description": [b"one long line"], "l": ["Zürich ".encode()], "uid": [b"a"]}


def test_ldif_folded_comment_is_skipped_whole():
    # RFC 2849, note 2: any line, comments included, may be folded.
    [change] = parse_ldif("dn: uid=a,dc=x\n# a comment that\n  goes on\nuid: a\n")
    assert change.dn == "uid=a,dc=x"
    assert change.attrs == {"uid": [b"a"]}


def test_ldif_version_line_in_its_own_block():
    # As ldapsearch -L and slapcat write it: "version: 1", a blank line, then records.
    changes = parse_ldif("version: 1\n\ndn: uid=a,dc=x\nuid: a\n")
    assert [(c.dn, c.kind) for c in changes] == [("uid=a,dc=x", "add")]


@pytest.mark.parametrize("text", ["dn: uid=a,dc=x\nchangetype: modrdn\nnewrdn: uid=b\n",
                                  "uid: a\ndn: uid=a,dc=x\n",
                                  "dn: uid=a,dc=x\nchangetype: modify\nfrobnicate: mail\n"])
def test_ldif_errors(text):
    with pytest.raises(ValueError):
        parse_ldif(text)


# --------------------------------------------------------------------- log

def test_level_flags_allows():
    flags = LevelFlags(debug=False, info=True, warning=False, error=True)
    assert not flags.allows(logging.DEBUG) and flags.allows(logging.INFO)
    assert not flags.allows(logging.WARNING) and not flags.allows(logging.WARNING + 5)
    assert flags.allows(logging.ERROR) and flags.allows(logging.CRITICAL)
    assert LevelFlags(debug=True).allows(logging.DEBUG)


def test_setup_gates_levels(tmp_path, capsys, restore_logging):
    log_setup("Backup-Rsnapshot", LevelFlags(debug=False), to_stdout=True,
              syslog_socket=str(tmp_path / "no-such-socket"))
    log = logging.getLogger("provisioning.test")
    log.debug("debug line")
    log.info("info line")
    out = capsys.readouterr().out
    assert "syslog socket" in out                  # fallback warning
    assert "debug line" not in out and "INFO info line" in out


# -------------------------------------------------------------------- lock

def test_pid_lock(tmp_path):
    path = tmp_path / "daemon.lock"
    first = PidLock(path)
    first.acquire()
    try:
        assert path.read_text() == f"{os.getpid()}\n"
        with pytest.raises(AlreadyLocked, match=str(os.getpid())):
            PidLock(path).acquire()
    finally:
        first.release()
    assert path.exists() and path.read_text() == ""
    with PidLock(path):
        assert path.read_text() == f"{os.getpid()}\n"


def test_the_position_keeps_every_server_ids_newest_csn():
    """A multi-provider's persist cookies name one server id each: none may be forgotten."""
    from provisioning.backend.cookie import merge_cookies
    one_old, one_new = "20261127120000.000000Z#000000#c71#000000", "20261127120900.000000Z#000000#c71#000000"
    two = "20261127120500.000000Z#000000#4ed#000000"
    position = merge_cookies(None, f"rid=001,sid=4ed,csn={two}")
    assert position == f"rid=001,csn={two}"                      # the provider's sid= is not sent back
    position = merge_cookies(position, f"rid=001,sid=c71,csn={one_new}")
    assert position == f"rid=001,csn={two};{one_new}"             # ordered by server id
    assert merge_cookies(position, f"rid=001,sid=c71,csn={one_old}") == position   # never backwards
    assert cookie_csn(position) == two      # %entryCSN% still reaches the older server's changes
    assert merge_cookies(None, "rid=002") == "rid=002"


def test_a_position_stored_with_the_providers_sid_is_sent_without_it(tmp_path):
    from provisioning.backend.cookie import CookieFile, Position
    from provisioning.backend.store import Store
    cookie = "rid=001,sid=c71,csn=20261127120000.000000Z#000000#c71#000000"
    store = Store(tmp_path / "state.sqlite")
    store.open()
    store.set_cookie(cookie)
    assert store.flush()
    (tmp_path / "cookie").write_text(cookie + "\n")
    position = Position(store, CookieFile(tmp_path / "cookie"), "rid=001")
    assert position.start().cookie == cookie
    assert position.cookie == "rid=001,csn=20261127120000.000000Z#000000#c71#000000"


def test_the_daemons_newest_own_writes_outlive_a_restart(tmp_path):
    """A restart between the outcome and its echo, while failing over, must still find the provider behind."""
    from provisioning.backend.store import Store
    from provisioning.engine.router import Router

    def router(store: Store) -> Router:
        return Router(modus="selfcare", base="ou=x", store=store, service=None, owners=Owners(60), selfcare=None,
                      ldap_mode=None, removals=None)
    a1, a2, b1 = (f"2026010100000{n}.000000Z#000000#{sid}#000000" for n, sid in ((1, "00a"), (2, "00a"), (3, "00b")))
    store = Store(tmp_path / "state.sqlite")
    store.open()
    first = router(store)
    first.note_own_writes([a1, b1])
    first.note_own_writes([a2])
    assert store.flush()
    again = Store(tmp_path / "state.sqlite")
    again.open()
    assert again.own_writes == [a2, b1]                    # the newest of each server id
    assert set(router(again).own_csns()) == {a2, b1}
    # Those a refresh judged lost are not kept either.
    second = router(again)
    second.forget_own_writes([a2])
    assert again.flush()
    third = Store(tmp_path / "state.sqlite")
    third.open()
    assert third.own_writes == [b1]


def test_a_provider_behind_the_cookie_for_one_server_id_is_found():
    from provisioning.backend.cookie import ahead_of
    mine = "rid=001,sid=001,csn=20261127120000.000000Z#000000#001#000000;20261127120500.000000Z#000000#002#000000"
    same = ["20261127120000.000000Z#000000#001#000000", "20261127120500.000000Z#000000#002#000000"]
    behind = ["20261127115959.000000Z#000000#001#000000", "20261127120500.000000Z#000000#002#000000"]
    assert ahead_of(mine, same) is None
    assert "server 001's changes up to 20261127115959" in ahead_of(mine, behind)
    assert "newer than anything" in ahead_of("rid=001,csn=20991231000000.000000Z#000000#009#000000", same)
    assert ahead_of(mine, []) is None and ahead_of(None, same) is None


# ------------------------------------------------------------ the low-water mark

def test_an_event_with_several_jobs_stays_open_until_each_is_handled():
    # A present phase that finds two entries gone enqueues both under one event:
    # the cookie must not pass it when the first removal ends.
    events = OpenEvents()
    for seq in (1, 2, 2, 3):
        events.add(seq)
    events.done(1)
    assert events.lowest() == 2
    events.done(2)
    assert events.lowest() == 2 and len(events) == 2
    events.done(2)
    assert events.lowest() == 3
    events.done(3)
    events.done(3)                                   # not open any more: ignored
    assert events.lowest() == math.inf and len(events) == 0


def test_the_lowest_open_event_is_found_past_events_handled_out_of_order():
    events = OpenEvents()
    for seq in range(1, 6):
        events.add(seq)
    for seq in (2, 4, 5):
        events.done(seq)
    assert events.lowest() == 1
    events.done(1)
    assert events.lowest() == 3
    events.add(6)
    events.done(3)
    assert events.lowest() == 6
    with pytest.raises(ValueError):
        events.add(5)                                # events come in order
    events.clear()
    assert events.lowest() == math.inf


def test_the_echo_of_our_own_write_is_recognised_without_decoding_the_entry(tmp_path, monkeypatch):
    from provisioning.backend.ldap import EntryChanged
    from provisioning.backend.store import Store
    from provisioning.base.entry import Entry
    from provisioning.engine.router import CHANGE, REFRESH, Router

    store = Store(tmp_path / "state.sqlite")
    store.open()
    router = Router(modus="selfcare", base="ou=x", store=store, service=None, owners=Owners(60), selfcare=None,
                    ldap_mode=None, removals=None)
    ours, theirs = "20261128100000.000001Z#000000#001#000000", "20261128100000.000002Z#000000#001#000000"
    router.note_own_writes([ours])
    raw = {"uid": [b"3723707"], "entryCSN": [ours.encode()], "sstProvisioningMode": [b"adding"]}
    event = EntryChanged("uid=3723707,ou=x", raw, "0A1B-C2")
    assert (event.uuid, event.csn) == ("0a1b-c2", ours)      # what the daemon needs for the lane and the metrics
    decoded = []
    monkeypatch.setattr(Entry, "from_ldap", classmethod(lambda cls, *a: decoded.append(a) or Entry("x")))
    assert router.stream_job(event, CHANGE) is None
    assert decoded == []                                      # the echo was never decoded
    # Anything else is decoded and judged as before: another CSN, or our own CSN in a refresh
    # (a directory that lost what came after it).
    judged = []
    monkeypatch.setattr(Router, "entry_job", lambda self, entry, origin: judged.append((entry.dn, origin)))
    router.stream_job(EntryChanged("uid=a,ou=x", {**raw, "entryCSN": [theirs.encode()]}, "u1"), CHANGE)
    router.stream_job(EntryChanged("uid=b,ou=x", raw, "u2"), REFRESH)
    assert judged == [("x", CHANGE), ("x", REFRESH)] and len(decoded) == 2


def test_a_claim_whose_outcome_was_refused_is_no_echo_when_the_entry_comes_back_to_it(tmp_path, monkeypatch):
    """Two claims made at once through two providers: our outcome write is refused (the other, older claim
    replicated over ours), then the providers settle on our claim again, with our claim's very entryCSN.
    That version must be judged (a request with our claim that nobody works on), not passed over as an echo:
    passed over, it waited for the lease (an hour) while the other daemon waited for ours (the HA soak)."""
    from provisioning.backend.ldap import EntryChanged
    from provisioning.backend.store import Store
    from provisioning.engine.results import Result
    from provisioning.engine.router import CHANGE, Router
    from provisioning.engine.workers import Job

    store = Store(tmp_path / "state.sqlite")
    store.open()
    router = Router(modus="selfcare", base="ou=x", store=store, service=None, owners=Owners(60), selfcare=None,
                    ldap_mode=None, removals=None)
    claim, outcome = "20261128100000.000001Z#000000#001#000000", "20261128100000.000003Z#000000#001#000000"
    judged = []
    monkeypatch.setattr(Router, "entry_job", lambda self, entry, origin: judged.append(entry.csn))
    raw = {"uid": [b"3723707"], "sstProvisioningMode": [b"adding"]}
    done = Job("u1", "uid=3723707,ou=x", lambda: Result())
    router.complete(done, Result(own_csns=[claim, outcome]))          # claimed and answered: echoes
    for csn in (claim, outcome):
        assert router.stream_job(EntryChanged(done.dn, {**raw, "entryCSN": [csn.encode()]}, "u1"), CHANGE) is None
    refused = Job("u2", "uid=3723708,ou=x", lambda: Result())
    ours = "20261128100000.000005Z#000000#001#000000"
    router.note_own_writes([ours])                                   # an earlier run's record of the claim
    router.complete(refused, Result(disowned=[ours], conflict=True))
    router.stream_job(EntryChanged(refused.dn, {**raw, "entryCSN": [ours.encode()]}, "u2"), CHANGE)
    assert judged == [ours] and ours not in router.own_csns()


def test_a_stream_entry_decodes_as_before():
    from provisioning.backend.ldap import EntryChanged
    from provisioning.base.entry import Entry

    raw = {"uid": [b"3723707"], "entryCSN": [b"20261128100000.000001Z#000000#001#000000"],
           "cn": ["Zoë".encode(), b"\xff"], "entryUUID": [b"ABC"]}
    event = EntryChanged("uid=3723707,ou=x", raw, None)
    assert event.uuid == "abc" and event.entry == Entry.from_ldap("uid=3723707,ou=x", raw)
    assert event.entry.get("cn") == "Zoë" and event.entry.csn == event.csn
    assert EntryChanged.of(event.entry).csn == event.csn


def test_an_outcome_the_directory_did_not_take_is_written_to_the_store_at_once():
    """Its only record is the store: a kill -9 while the other workers finish must not lose it."""
    from collections import deque

    from provisioning.backend.store import PendingWrite
    from provisioning.engine.results import Result
    from provisioning.engine.workers import Job

    flushes = []
    job = Job("uuid-1", "uid=a,ou=x", lambda: None)
    job.key, job.seq = "uuid-1", 1
    pending = Result(pending=PendingWrite("uid=a,ou=x", {"sstProvisioningMode": ["added"]}, "(x=y)", "write"))
    completed = [[(job, pending)], [(job, Result())]]
    daemon = Daemon(directory=None, stream=None, store=None, router=SimpleNamespace(complete=lambda j, r: None),
                    position=SimpleNamespace(flush=lambda mirror=False: flushes.append(mirror) or True),
                    executor=SimpleNamespace(completed=lambda timeout: completed.pop(0)),
                    startup=None, operation=None, base="ou=x")
    for _ in range(2):
        daemon._lanes[job.key] = deque()
        daemon._in_hand.add(1)
        daemon._collect()
    assert len(flushes) == 1                               # the pending one at once; a plain outcome waits
    assert daemon._trouble == "the directory did not take a write"


# ------------------------------------------------------------- deletion brake

def test_the_deletion_brake_engages_above_both_the_count_and_the_share():
    from provisioning.engine.brake import BrakeSettings
    brake = BrakeSettings(percent=10, count=5)
    assert not brake.engages(5, lambda: 10)          # not more than the count, whatever the share
    assert brake.engages(6, lambda: 10)
    assert not brake.engages(6, lambda: 60)          # 10 % of 60: not more than the share
    assert brake.engages(7, lambda: 60)
    counted = []
    assert not brake.engages(3, lambda: counted.append(1) or 1)
    assert counted == []                              # the accounts are not counted when the count decides


def test_a_batch_is_judged_after_the_refresh_or_after_its_window():
    from provisioning.engine.brake import Brake, BrakeSettings, Parked
    now = [100.0]
    brake = Brake(BrakeSettings(window=10), clock=lambda: now[0])
    brake.park(Parked("a", 1, "a"), in_refresh=True)
    assert brake.due(in_refresh=True) == []
    assert [p.uuid for p in brake.due(in_refresh=False)] == ["a"]    # the refresh is over
    brake.park(Parked("b", 2, "b"), in_refresh=False)
    now[0] = 105.0
    brake.park(Parked("c", 3, "c"), in_refresh=False)               # the same window
    assert brake.due(in_refresh=False) == []
    now[0] = 110.0
    assert [p.uuid for p in brake.due(in_refresh=False)] == ["b", "c"]
    assert brake.due(in_refresh=False) == []
    brake.park(Parked("d", 4, "d"), in_refresh=False)
    brake.clear()
    now[0] = 200.0
    assert brake.due(in_refresh=False) == []                         # a reconnect: the server sends it again


def test_dns_are_compared_as_the_directory_compares_them():
    from provisioning.backend.dn import below, normal_dn
    assert normal_dn("UID=3723707 , OU=Accounts,dc=X") == "uid=3723707,ou=accounts,dc=x"
    assert below("uid=1,ou=accounts,dc=x", "OU=Accounts, dc=X")
    assert not below("ou=accounts,dc=x", "ou=accounts,dc=x", strictly=True)
    assert not below(r"uid=a,cn=x\,ou=accounts,dc=x", "ou=accounts,dc=x")   # an escaped comma is no separator
    assert not below("not a dn", "ou=accounts,dc=x")


@pytest.mark.parametrize("value", ["20261127120000Z", "20261127120000.123456Z#000000#000#000000", "20240229235959Z",
                                   "20230229120000Z", "20261327120000Z", "20261127246000Z", "2026112712000Z",
                                   "2026112712000", "２０２６1127120000Z", "abcdefghijklmn", "", None])
def test_generalized_time_reads_what_strptime_read(value):
    """The quick reading of the usual form gives what strptime gave, and None for what it refused."""
    import datetime as dt
    try:
        expected = dt.datetime.strptime(value[:14], "%Y%m%d%H%M%S").replace(tzinfo=dt.timezone.utc)
    except (ValueError, TypeError):
        expected = None
    assert generalized_time(value) == expected

"""The daemon driven step by step in this process: a clock we move, plugins we write."""
from __future__ import annotations

import contextlib
import datetime as dt
import logging

import pluggy
import pytest

from provisioning.hooks import specs as hookspecs
from provisioning.cli import build_daemon, load_configuration
from provisioning.base.clock import Clock
from provisioning.base.codes import ReturnValue
from provisioning.hooks.specs import hookimpl
from provisioning.hooks.service import Service, ServiceContext
from provisioning.transport import LocalCLI

from helpers import Host, assert_done, wait_until

UID = "3723707"


class FakeClock(Clock):
    """Real UTC time; a local date the test sets."""

    def __init__(self, today: dt.date) -> None:
        self.day = today

    def today(self) -> dt.date:
        return self.day


def _service(host, manager=None):
    config, loaded = load_configuration(host.config, str(host.global_config))
    service = Service(manager or loaded, ServiceContext(config, LocalCLI()))
    assert service.start() == []
    return config, service


def _steps_until(daemon, condition, what):
    def stepped():
        daemon.step(timeout=0.05)
        return condition()
    return wait_until(stepped, what)


@pytest.fixture
def running(host):
    """A started in-process daemon with a settable date; shut down afterwards."""
    clock = FakeClock(dt.date.today())
    config, service = _service(host)
    daemon = build_daemon(config, service, clock=clock)
    daemon.start()
    _steps_until(daemon, lambda: not daemon.in_refresh, "the initial refresh")
    yield daemon, clock
    daemon.shutdown()


def test_a_dated_request_is_done_on_its_day_without_anyone_touching_it(running, directory, caplog):
    daemon, clock = running
    caplog.set_level(logging.INFO)
    tomorrow = clock.day + dt.timedelta(days=1)
    dn = directory.add(UID, sstProvisioningExecutionDate=tomorrow.strftime("%Y%m%d"))
    _steps_until(daemon, lambda: "left until that day" in caplog.text, "the postponement")
    for _ in range(5):
        daemon.step(timeout=0.05)
    assert directory.get(dn)["sstProvisioningMode"] == "add"

    clock.day = tomorrow                      # midnight passes
    _steps_until(daemon, lambda: directory.get(dn)["sstProvisioningMode"] == "added", "the dated add")
    assert_done(directory.get(dn), "added")


def test_a_dated_request_seen_before_a_restart_is_done_on_its_day(host, directory, running):
    daemon, clock = running
    tomorrow = clock.day + dt.timedelta(days=1)
    dn = directory.add(UID, sstProvisioningExecutionDate=tomorrow.strftime("%Y%m%d"))
    _steps_until(daemon, lambda: (daemon.position.current or '').endswith(directory.get(dn)["entryCSN"]),
                 "the cookie to move past the dated request")
    daemon.shutdown()

    # The next day a new daemon starts: its cookie is past the entry, so only
    # the search for dated requests can find it.
    config, service = _service(host)
    later = build_daemon(config, service, clock=FakeClock(tomorrow))
    later.start()
    try:
        _steps_until(later, lambda: directory.get(dn)["sstProvisioningMode"] == "added", "the dated add")
    finally:
        later.shutdown()


def test_postponing_removes_the_return_value_of_an_earlier_attempt(running, directory):
    daemon, clock = running
    tomorrow = (clock.day + dt.timedelta(days=1)).strftime("%Y%m%d")
    dn = directory.add(UID, sstProvisioningReturnValue="6", sstProvisioningExecutionDate=tomorrow)
    _steps_until(daemon, lambda: "sstProvisioningReturnValue" not in directory.get(dn),
                 "the old return value to go")
    assert directory.get(dn)["sstProvisioningMode"] == "add"


class Raising:
    """A plugin with a bug."""

    @hookimpl
    def provisioning_add(self, request, ctx):
        raise RuntimeError("plugin bug")

    @hookimpl
    def provisioning_modify(self, request, ctx):
        return "not a number"

    @hookimpl
    def provisioning_delete(self, request, ctx):
        return 0


def _manager(plugin) -> pluggy.PluginManager:
    manager = pluggy.PluginManager(hookspecs.PROJECT)
    manager.add_hookspecs(hookspecs)
    manager.register(plugin)
    return manager


def test_a_plugin_exception_fails_that_request_only(host, directory, caplog):
    config, service = _service(host, _manager(Raising()))
    daemon = build_daemon(config, service)
    daemon.start()
    try:
        bad = directory.add(UID)
        entry = wait_until(lambda: daemon.step(0.05) or directory.get(bad).get("sstProvisioningReturnValue"),
                           "the failure to be written")
        assert entry == str(ReturnValue.UNDEFINED_ERROR)
        assert directory.get(bad)["sstProvisioningMode"] == "adding"
        assert "plugin raised during add" in caplog.text and "RuntimeError: plugin bug" in caplog.text
        # The daemon goes on: a modify whose hook returns garbage fails the same way,
        # and a delete that works is done.
        other = directory.add("3723708", sstProvisioningMode="modify")
        wait_until(lambda: daemon.step(0.05) or directory.get(other).get("sstProvisioningReturnValue") == "1",
                   "the modify failure")
        assert "returned 'not a number' from modify" in caplog.text
        third = directory.add("3723709", sstProvisioningMode="delete", sstIsActive="FALSE")
        wait_until(lambda: daemon.step(0.05) or directory.get(third)["sstProvisioningMode"] == "deleted",
                   "the delete")
    finally:
        daemon.shutdown()


class NotMine:
    @hookimpl
    def provisioning_owns(self, entry, ctx):
        return False

    @hookimpl
    def provisioning_add(self, request, ctx):
        raise AssertionError("must not be called")

    provisioning_modify = provisioning_delete = provisioning_add


def test_an_entry_of_another_host_is_left_untouched(host, directory):
    config, service = _service(host, _manager(NotMine()))
    daemon = build_daemon(config, service)
    daemon.start()
    try:
        dn = directory.add(UID, sstProvisioningMode="delete")     # would be refused if it were ours
        before = directory.get(dn)
        _steps_until(daemon, lambda: (daemon.position.current or '').endswith(before["entryCSN"]), "the event")
        assert directory.get(dn) == before
    finally:
        daemon.shutdown()


def test_an_unexpected_error_costs_the_entry_not_the_daemon(running, directory, caplog, monkeypatch):
    daemon, _ = running
    real = daemon.router.entry_job

    def broken_for_one(entry, **how):
        if entry.dn.startswith(f"uid={UID},"):
            raise KeyError("a bug")
        return real(entry, **how)

    monkeypatch.setattr(daemon.router, "entry_job", broken_for_one)
    directory.add(UID)
    other = directory.add("3723708")
    _steps_until(daemon, lambda: directory.get(other)["sstProvisioningMode"] == "added", "the next request")
    assert f"uid={UID},{directory.subtree}: unexpected error while judging the entry" in caplog.text
    assert "KeyError: 'a bug'" in caplog.text


class Gate:
    """A plugin whose adds wait until the test opens the gate; counts the calls per DN."""

    def __init__(self) -> None:
        import threading
        self.open = threading.Event()
        self.calls: dict[str, int] = {}

    @hookimpl
    def provisioning_add(self, request, ctx):
        self.calls[request.dn] = self.calls.get(request.dn, 0) + 1
        self.open.wait(60)
        return 0

    @hookimpl
    def provisioning_modify(self, request, ctx):
        return 0

    provisioning_delete = provisioning_modify


@contextlib.contextmanager
def _gated(host):
    """A started, refreshed daemon with two workers whose adds wait at a Gate; shut down afterwards."""
    host.set("Service", WORKERS=2)
    gate = Gate()
    config, service = _service(host, _manager(gate))
    daemon = build_daemon(config, service)
    daemon.start()
    try:
        _steps_until(daemon, lambda: not daemon.in_refresh, "the initial refresh")
        yield daemon, gate
    finally:
        gate.open.set()
        daemon.shutdown()


def test_a_burst_larger_than_max_waiting_waits_at_the_server_not_in_memory(host, directory, monkeypatch, caplog):
    """With the workers stuck, the daemon stops reading the stream at MAX_WAITING (plus one read's batch).

    The stream then lags behind our writes: echoes of claims come after the
    outcome, long after the list of our own writes forgot them (here at
    once); they are recognised as older than what the store knows.
    """
    from provisioning.engine import daemon as daemon_module
    from provisioning.engine import router as router_module
    from provisioning.backend.ldap import POLL_BATCH
    monkeypatch.setattr(daemon_module, "MAX_WAITING", 20)
    monkeypatch.setattr(router_module, "OWN_WRITES_KEPT", 1)
    caplog.set_level(logging.INFO)
    with _gated(host) as (daemon, gate):
        dns = [directory.add(str(3723800 + i)) for i in range(POLL_BATCH + 100)]
        _steps_until(daemon, lambda: daemon.waiting >= 20, "the backlog to fill")
        most = 0
        for _ in range(40):                               # the stream is not read on while workers are stuck
            daemon.step(timeout=0.05)
            most = max(most, daemon.waiting)
        assert 20 <= most < 20 + POLL_BATCH, most
        gate.open.set()
        _steps_until(daemon, lambda: all(directory.get(dn)["sstProvisioningMode"] == "added" for dn in dns[-5:])
                     and daemon.waiting == 0, "the whole burst done")
        assert all(directory.get(dn)["sstProvisioningMode"] == "added" for dn in dns)
        assert set(gate.calls) == set(dns) and set(gate.calls.values()) == {1}
        assert "resuming" not in caplog.text and "not claimed" not in caplog.text


class _Sleeps:
    """The time module for the daemon's module, with its sleeps recorded."""

    def __init__(self) -> None:
        import time
        self._time = time
        self.slept: list[float] = []

    def __getattr__(self, name):
        return getattr(self._time, name)

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self._time.sleep(seconds)


@pytest.mark.parametrize("requests, paced", [(1, False), (3, False), (4, True), (6, True)])
def test_rounds_are_paced_only_while_jobs_wait_for_a_worker(host, directory, monkeypatch, requests, paced):
    """With a backlog (as many jobs waiting as there are workers) a round begins at most every
    BUSY_ROUND: fewer wake-ups and commits per account. Otherwise never held back: a lone
    request's latency is not paid for it, and workers that could run out of jobs are not kept waiting."""
    from provisioning.engine import daemon as daemon_module
    monkeypatch.setattr(daemon_module, "BUSY_ROUND", 0.05)
    clock = _Sleeps()
    monkeypatch.setattr(daemon_module, "time", clock)
    with _gated(host) as (daemon, gate):
        dns = [directory.add(str(3723900 + i)) for i in range(requests)]
        _steps_until(daemon, lambda: daemon.executor.busy == requests and len(gate.calls) == min(requests, 2),
                     "the requests in hand")
        polled = []
        poll = daemon.stream.poll
        monkeypatch.setattr(daemon.stream, "poll", lambda timeout: polled.append(clock.monotonic()) or poll(timeout))
        clock.slept.clear()
        for _ in range(6):
            daemon.step(timeout=0.001)
        gaps = [later - earlier for earlier, later in zip(polled, polled[1:])]
        if paced:
            assert len(clock.slept) >= 5 and min(gaps) >= 0.05, (clock.slept, gaps)
        else:
            assert clock.slept == []
        gate.open.set()
        _steps_until(daemon, lambda: all(directory.get(dn)["sstProvisioningMode"] == "added" for dn in dns)
                     and daemon.waiting == 0, "the requests done")


class SkewedClock(Clock):
    """This machine's clock, set ``hours`` off."""

    def __init__(self, hours: float) -> None:
        self.offset = dt.timedelta(hours=hours)

    def utcnow(self) -> dt.datetime:
        return super().utcnow() + self.offset


def _twin(host, name: str):
    """A second daemon for the same subtree and backup host (an HA pair), with its own state files."""
    twin = Host(host.layout.root.parent / name, host.slapd, host.subtree)
    twin.service = {section: dict(keys) for section, keys in host.service.items()}
    twin.set("Database", COOKIE_FILE=twin.layout.cookie)
    twin.global_ = {section: dict(keys) for section, keys in host.global_.items()}
    twin.write()
    return twin


@pytest.mark.parametrize("claimant_hours, judge_hours", [(0, 2), (-2, 0)], ids=["judge-ahead", "claimant-behind"])
def test_daemons_whose_clocks_differ_by_more_than_the_lease_leave_each_others_fresh_claims(
        host, directory, caplog, claimant_hours, judge_hours):
    """A claim's age is the directory's (entryCSN) time, not the claimant's stamp against the judge's clock."""
    caplog.set_level(logging.INFO)
    host.set("Service", NODE_NAME="backup-a", WORKERS=2, COMMAND_TIMEOUT=60, CLAIM_LEASE=600)
    twin = _twin(host, "twin")
    twin.set("Service", NODE_NAME="backup-b")
    gates, daemons = [Gate(), Gate()], []
    try:
        for conf, gate, hours in ((host, gates[0], claimant_hours), (twin, gates[1], judge_hours)):
            config, service = _service(conf, _manager(gate))
            daemons.append(build_daemon(config, service, clock=SkewedClock(hours)))
            daemons[-1].start()
        backup_a, backup_b = daemons
        for daemon in daemons:
            _steps_until(daemon, lambda: not daemon.in_refresh, "the initial refresh")
        dn = directory.add(UID)
        _steps_until(backup_a, lambda: dn in gates[0].calls, "backup-a inside the add")

        def judged() -> list[str]:
            return [r.getMessage() for r in caplog.records
                    if r.getMessage().startswith((f"{dn}: adding: claimed by backup-a", f"{dn}: resuming"))]
        _steps_until(backup_b, judged, "backup-b's judgement of backup-a's claim")
        assert "taken over if still open" in judged()[0], judged()
        for _ in range(10):
            backup_b.step(timeout=0.02)
        assert gates[1].calls == {}                   # backup-b left the claim alone
        gates[0].open.set()
        _steps_until(backup_a, lambda: directory.get(dn)["sstProvisioningMode"] == "added", "backup-a's outcome")
        assert gates[0].calls == {dn: 1} and gates[1].calls == {}
    finally:
        for gate in gates:
            gate.open.set()
        for daemon in daemons:
            daemon.shutdown()

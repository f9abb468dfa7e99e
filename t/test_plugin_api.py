"""provisioning.api: the one module a plugin imports, its version, and the hooks an author gets.

A plugin may refuse a request before it is claimed (provisioning_validate), and
a modify hook sees the entry as the daemon knew it before (request.previous).
"""
from __future__ import annotations

import pluggy
import pytest

from provisioning import api
from provisioning.cli import build_daemon
from provisioning.hooks import specs

from helpers import wait_until
from test_daemon_steps import _service

UID = "3723707"
# What the API promises (API_VERSION 1.1: 1.0 and the audit's types). Changing this list is changing the API:
# raise API_VERSION with it (a new name: MINOR; a name gone or changed: MAJOR).
PROMISED = ["API_VERSION", "ApiVersionError", "Audit", "CheckLine", "Clock", "CommandResult", "Entry", "Expect",
            "Expected", "Finding", "HOOKS",
            "Interrupted", "PLUGIN_RETURN_VALUES", "Request", "ReturnValue", "ServiceContext", "Transport",
            "Unreachable", "etc_path", "hookimpl", "require", "shipped_file", "utc_stamp", "within_deadline"]


def test_the_api_promises_exactly_its_names():
    assert sorted(api.__all__) == sorted(PROMISED)
    assert all(getattr(api, name) is not None for name in api.__all__)
    assert api.HOOKS == specs.HOOKS and "provisioning_validate" in api.HOOKS


@pytest.mark.parametrize("wanted, ok", [("1.0", True), ("1", True), ("1.1", True), ("1.2", False),
                                        ("2.0", False), ("0.9", False)])
def test_a_plugin_requires_an_api_version(wanted, ok):
    if ok:
        api.require(wanted)
    else:
        with pytest.raises(api.ApiVersionError, match=f"needs the provisioning plugin API {wanted}"):
            api.require(wanted)


class Judging:
    """Refuses a request for an entry without a description; records what the hooks were given."""

    def __init__(self) -> None:
        self.added: list[str] = []
        self.previous: list = []

    @api.hookimpl
    def provisioning_validate(self, request, ctx):
        return None if request.entry.get("description") else 42

    @api.hookimpl
    def provisioning_add(self, request, ctx):
        self.added.append(request.dn)
        return 0

    @api.hookimpl
    def provisioning_modify(self, request, ctx):
        self.previous.append(request.previous)
        return 0

    @api.hookimpl
    def provisioning_delete(self, request, ctx):
        return 0


def _manager(plugin) -> pluggy.PluginManager:
    manager = pluggy.PluginManager(specs.PROJECT)
    manager.add_hookspecs(specs)
    manager.register(plugin)
    return manager


@pytest.fixture
def judged(host):
    plugin = Judging()
    config, service = _service(host, _manager(plugin))
    daemon = build_daemon(config, service)
    daemon.start()
    yield daemon, plugin
    daemon.shutdown()


def test_a_plugin_refuses_a_request_before_its_claim(judged, directory):
    daemon, plugin = judged
    dn = directory.add(UID)
    entry = wait_until(lambda: daemon.step(0.05) or
                       (e := directory.get(dn)).get("sstProvisioningReturnValue") == "42" and e, "the refusal")
    assert entry["sstProvisioningMode"] == "add"             # not claimed
    assert "sstProvisioningExecutionTime" not in entry and plugin.added == []
    directory.modify(dn, description="a note", sstProvisioningReturnValue=None)   # fixed: a new request
    wait_until(lambda: daemon.step(0.05) or directory.get(dn)["sstProvisioningMode"] == "added", "the add")
    assert plugin.added == [dn]


def test_a_modify_hook_gets_the_entry_as_it_was_before(judged, directory):
    daemon, plugin = judged
    dn = directory.add(UID, sstQuota="1024", description="a note")
    wait_until(lambda: daemon.step(0.05) or directory.get(dn)["sstProvisioningMode"] == "added", "the add")
    directory.request(dn, "modify", sstQuota="2048")
    wait_until(lambda: daemon.step(0.05) or directory.get(dn)["sstProvisioningMode"] == "modified", "the modify")
    [previous] = plugin.previous
    assert previous.get("sstQuota") == "1024" and previous.get("sstProvisioningMode") == "added"

"""The files ``provisioning-daemon new-plugin`` writes, with @NAME@ placeholders.

@SERVICE@, @TYPE@: as given; @PACKAGE@: the import name; @DIST@: the
distribution name; @CLASS@: the plugin class; @SECTION@: its configuration
section. provisioning.operator.scaffold fills them in.
"""

PYPROJECT = '''\
[build-system]
requires = ["setuptools>=64"]
build-backend = "setuptools.build_meta"

[project]
name = "@DIST@"
version = "0.1.0"
description = "@SERVICE@/@TYPE@: a service plugin for the provisioning daemon"
requires-python = ">=3.11"
# provisioning itself is not listed: install it first (pip install of its
# checkout); this package only adds the plugin to it.
dependencies = []

# The daemon finds the plugin by this name: [Service] SERVICE = @SERVICE@, TYPE = @TYPE@.
[project.entry-points."provisioning.plugins"]
"@SERVICE@/@TYPE@" = "@PACKAGE@.plugin:@CLASS@"

[tool.setuptools]
packages = ["@PACKAGE@"]

[tool.pytest.ini_options]
testpaths = ["tests"]
'''

INIT = '''\
"""The @SERVICE@/@TYPE@ service plugin for the provisioning daemon."""

# How a provisioning checkout finds this folder when it is symlinked into its
# plugins/ folder, without an install: the same line as the entry point in
# pyproject.toml (keep the two in step).
PROVISIONING_ENTRY_POINT = "@SERVICE@/@TYPE@ = @PACKAGE@.plugin:@CLASS@"
'''

PLUGIN = '''\
"""@SERVICE@/@TYPE@: the hook implementations.

Written by ``provisioning-daemon new-plugin``: every hook logs what it got
and the request hooks return 0. Make them do the work:

- every command and file change through ``ctx.transport`` (so that --dry-run
  and TRANSPORTAPI = CLISSH hold), never subprocess or open() on the host;
- add, modify and delete are idempotent (after a crash they run again) and
  return 0 for success or one of RETURN_VALUES (0-99: the core keeps 100
  and up);
- one log record, one line, starting with the DN; never a password.

The whole contract: docs/PLUGINS.md and provisioning/hookspecs.py of provisioning.
"""
from __future__ import annotations

import logging

from typing import Iterable

from provisioning.api import Audit, CheckLine, Expected, Request, ServiceContext, hookimpl, require

require("1.1")      # the plugin API this plugin is written for (provisioning.api)

log = logging.getLogger(__name__)

NAME = "@SERVICE@/@TYPE@"
SECTION = "@SECTION@"
# The plugin's own section. Every key has a default, so the plugin also runs
# with a service configuration that has no [@SECTION@] section at all.
SPEC = """[@SECTION@]
# An example setting: replace it with the plugin's own.
LABEL = string(default="@SERVICE@/@TYPE@")
"""

SUCCESS = 0
# The return values of add, modify and delete with their meaning, for
# provisioning-daemon status and retry.
RETURN_VALUES = {SUCCESS: "SUCCESS: the request was done"}


class @CLASS@:
    """One instance per daemon."""

    def __init__(self) -> None:
        self.label = ""

    @hookimpl
    def provisioning_config_spec(self) -> str:
        return SPEC

    @hookimpl
    def provisioning_start(self, ctx: ServiceContext) -> list[str]:
        """Check the settings and the host; each problem a sentence naming the key."""
        self.label = ctx.section(SECTION)["LABEL"]
        log.info("%s: started with LABEL %s%s", NAME, self.label, " (dry-run)" if ctx.dry_run else "")
        return []

    @hookimpl
    def provisioning_add(self, request: Request, ctx: ServiceContext) -> int:
        return self._got(request, ctx)

    @hookimpl
    def provisioning_modify(self, request: Request, ctx: ServiceContext) -> int:
        return self._got(request, ctx)

    @hookimpl
    def provisioning_delete(self, request: Request, ctx: ServiceContext) -> int:
        return self._got(request, ctx)

    @hookimpl
    def provisioning_stop(self, ctx: ServiceContext) -> None:
        log.info("%s: stopped", NAME)

    @hookimpl
    def provisioning_check(self, ctx: ServiceContext) -> list[CheckLine]:
        """One line per thing checked for provisioning-daemon --check; change nothing."""
        return [CheckLine.ok(f"{NAME} LABEL", repr(ctx.section(SECTION)["LABEL"]))]

    @hookimpl
    def provisioning_status(self, ctx: ServiceContext) -> dict[str, str]:
        """Details for provisioning-daemon status: read only, and quick."""
        return {"LABEL": ctx.section(SECTION)["LABEL"]}

    @hookimpl
    def provisioning_return_values(self) -> dict[int, str]:
        return RETURN_VALUES

    @hookimpl
    def provisioning_audit(self, entries: Iterable[Expected], only: str | None, ctx: ServiceContext) -> Audit:
        """provisioning-daemon audit: compare what the plugin made on the host with ``entries``.

        Read the host once (not once per entry), then return a
        provisioning.api.Finding for each thing that differs, and one for
        each object no entry explains (an orphan: ``name`` is what
        provisioning-daemon retire takes). Until then the plugin says so.
        """
        return Audit.impossible(f"{NAME} does not audit yet (its provisioning_audit is the scaffold's stub)")

    def _got(self, request: Request, ctx: ServiceContext) -> int:
        # Attribute names only: values may be secrets (userPassword) and are the directory's data.
        names = ", ".join(sorted(request.entry.attrs, key=str.lower))
        log.info("%s: %s %s got the entry (LABEL %s; attributes: %s)%s", request.dn, NAME, request.verb,
                 self.label, names, " (dry-run)" if ctx.dry_run else "")
        return SUCCESS
'''

CONF_TEMPLATE = '''\
# Service configuration of the @SERVICE@/@TYPE@ provisioning daemon.
# Copy to @TYPE@.conf (or @TYPE@_test.conf for a test run), set [Database],
# then check it with: provisioning-daemon -c @TYPE@.conf -t

[Global]
LOG_DEBUG = 0
LOG_INFO = 1
LOG_WARNING = 1
LOG_ERR = 1
ENVIRONMENT =

[Database]
BACKEND = LDAP
SERVER = ldaps://ldap.example.org
PORT = 636
# A service account of the daemon's own, not the rootDN (see the deployment docs of provisioning).
ADMIN_USER = cn=prov-@SECTION_LOWER@,ou=services,dc=stoney-cloud,dc=org
ADMIN_PASSWORD = change-me
SERVICE_SUBTREE = ou=accounts,ou=@SECTION_LOWER@,ou=services,dc=stoney-cloud,dc=org
COOKIE_FILE = /var/lib/provisioning/@SERVICE@-@TYPE@.cookie
DEFAULT_COOKIE = rid=001,csn=
SEARCH_FILTER = (&(entryCSN>=%entryCSN%)(objectClass=*))

[Service]
MODUS = selfcare
TRANSPORTAPI = LocalCLI
SERVICE = @SERVICE@
TYPE = @TYPE@
SYSLOG = @SERVICE@-@TYPE@

[Gateway]
HOST = localhost
USER = provisioning
DSA_FILE = none

[@SECTION@]
# LABEL = @SERVICE@/@TYPE@
'''

TEST = '''\
"""@SERVICE@/@TYPE@ against a throwaway slapd, with the fixtures of provisioning's pytest plugin.

provisioning_daemon starts the daemon with this plugin (installed: pip
install this folder) on a subtree of the test's own; provisioning_entries
writes entries there the way a portal does.
"""
import re

from provisioning.testing import assert_done

PLUGIN = "@SERVICE@/@TYPE@"


def test_a_request_goes_add_adding_added(provisioning_daemon, provisioning_entries):
    daemon = provisioning_daemon(PLUGIN)
    dn = provisioning_entries.add("demo")
    assert_done(provisioning_entries.wait_mode(dn, "added"), "added")
    daemon.wait_for(re.escape(f"{dn}: {PLUGIN} add got the entry (LABEL {PLUGIN}; attributes: ") + ".*uid")


def test_modify_and_delete_and_the_section_of_its_own(provisioning_daemon, provisioning_entries):
    daemon = provisioning_daemon(PLUGIN, {"@SECTION@": {"LABEL": "from the test"}})
    dn = provisioning_entries.add("demo")
    provisioning_entries.wait_mode(dn, "added")
    provisioning_entries.request(dn, "modify")
    assert_done(provisioning_entries.wait_mode(dn, "modified"), "modified")
    provisioning_entries.request(dn, "delete", sstIsActive="FALSE")
    assert_done(provisioning_entries.wait_mode(dn, "deleted"), "deleted")
    for verb in ("add", "modify", "delete"):
        daemon.wait_for(re.escape(f"{dn}: {PLUGIN} {verb} got the entry (LABEL from the test;"))
'''

README = '''\
# @SERVICE@/@TYPE@

A service plugin for the provisioning daemon, made with
`provisioning-daemon new-plugin @SERVICE@/@TYPE@`. Its hooks are in
`@PACKAGE@/plugin.py`; its settings are the section `[@SECTION@]` of the
service configuration (`SPEC` in plugin.py; every key has a default).

Installed, with the Python provisioning runs on (`python` below: the one of
provisioning's virtualenv, e.g. /opt/provisioning/bin/python; a bare `pytest` may be another
Python's, which has no provisioning):

```sh
python -m pip install -e .                     # editable: a change counts without installing again
python -m provisioning --list-plugins          # @SERVICE@/@TYPE@ ... distribution @DIST@ 0.1.0
cp etc/Provisioning/@SERVICE@/@TYPE@.conf.template /etc/Provisioning/@SERVICE@/@TYPE@.conf   # set [Database]
python -m provisioning -c /etc/Provisioning/@SERVICE@/@TYPE@.conf -t
python -m pytest                               # tests/ against a throwaway slapd
```

The tests need pytest in that Python: `python -m pip install 'provisioning[test]'`. With
provisioning from its Debian package (Debian's python3, where pip installs nothing): `apt install
python3-pytest`, then a virtualenv that sees Debian's packages, `python3 -m venv
--system-site-packages .venv`, and `.venv/bin/python` as `python` above.

From a checkout of provisioning, without installing it (the wiki's way):

```sh
ln -s "$PWD/@PACKAGE@" /path/to/provisioning/plugins/@PACKAGE@
ln -s "$PWD/etc/Provisioning/@SERVICE@" /path/to/provisioning/etc/Provisioning/@SERVICE@
cd /path/to/provisioning
cp etc/Provisioning/@SERVICE@/@TYPE@.conf.template etc/Provisioning/@SERVICE@/@TYPE@_test.conf   # set [Database]
bin/provisioning-daemon -c etc/Provisioning/@SERVICE@/@TYPE@_test.conf -d
```
'''

GITIGNORE = '''\
__pycache__/
/.venv/
*.egg-info/
/build/
/dist/
etc/Provisioning/*/*_test.conf
'''

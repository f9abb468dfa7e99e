"""Test support for plugin authors, and for this project's own tests and benchmarks.

Everything a plugin's tests need to see a request go add -> adding -> added
against a real directory: a throwaway slapd with our schema and syncprov
(:class:`Slapd`), a subtree per test (:func:`make_subtree`), a helper that
writes entries and waits for their outcome (:class:`Entries`), the service
configuration of a daemon under test (:class:`ServiceFiles`) and the daemon in
a subprocess (:class:`DaemonProcess`).

As a pytest plugin (module ``provisioning.testing.plugin``, registered under
the ``pytest11`` entry point when provisioning is installed) it offers the
fixtures ``provisioning_slapd``, ``provisioning_subtree``,
``provisioning_entries``, ``provisioning_service`` and
``provisioning_daemon``; they do nothing until a test asks for them. See
docs/PLUGINS.md, "Testing".
"""
from __future__ import annotations

from provisioning.testing.configs import (
    ServiceFiles, core_sections, database_keys, edit_ini, global_sections, render_ini,
)
from provisioning.testing.daemon import READY, DaemonProcess
from provisioning.testing.entries import STAMP, Entries, assert_done, encode, request_attrs
from provisioning.testing.files import as_user, picture
from provisioning.testing.slapd import (
    ACCOUNTS_BASE, BACKUP_BASE, SERVICES_BASE, SUFFIX, Slapd, make_subtree, subtree_name,
)
from provisioning.testing.wait import DEADLINE, wait_until

__all__ = ["ACCOUNTS_BASE", "BACKUP_BASE", "DEADLINE", "DaemonProcess", "Entries", "READY", "SERVICES_BASE",
           "STAMP", "SUFFIX", "ServiceFiles", "Slapd", "as_user", "assert_done", "core_sections", "database_keys",
           "edit_ini", "encode",
           "global_sections", "make_subtree", "picture", "render_ini", "request_attrs", "subtree_name",
           "wait_until"]

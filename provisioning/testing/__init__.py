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

import importlib
from typing import Any

# Where each name lives. Imported on first use (PEP 562), so that loading the
# pytest plugin, a submodule, imports neither python-ldap nor anything else.
_WHERE = {
    "configs": ("EditableConfigs", "ServiceFiles", "core_sections", "database_keys", "edit_ini", "global_sections", "render_ini"),
    "daemon": ("READY", "DaemonProcess"),
    "entries": ("STAMP", "Entries", "assert_done", "encode", "request_attrs"),
    "files": ("as_user", "picture"),
    "sshd": ("Sshd",),
    "slapd": ("ACCOUNTS_BASE", "BACKUP_BASE", "SERVICES_BASE", "SUFFIX", "Slapd", "make_subtree", "subtree_name"),
    "sandbox": ("REPO", "SandboxLayout", "global_sections", "service_sections", "write_recorder"),
    "wait": ("DEADLINE", "wait_until"),
}
_MODULE = {name: module for module, names in _WHERE.items() for name in names}
__all__ = sorted(_MODULE)


def __getattr__(name: str) -> Any:
    module = _MODULE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)

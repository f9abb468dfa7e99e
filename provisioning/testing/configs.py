"""Service configurations and Global.conf for a daemon under test, in a folder of the test's own."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from provisioning.sandbox.layout import global_sections, render_ini

__all__ = ["EditableConfigs", "ServiceFiles", "core_sections", "database_keys", "edit_ini", "global_sections", "render_ini"]


def core_sections(*, uri: str, bind_dn: str, password: str, subtree: str, state_dir: Path,
                  service: str, type_: str, modus: str = "selfcare",
                  transport: str = "LocalCLI") -> dict[str, dict[str, Any]]:
    """[Global], [Database], [Service] and [Gateway] of a daemon that serves ``subtree`` as SERVICE/TYPE.

    Its cookie, store and lock lie in ``state_dir``.
    """
    return {
        "Global": {"LOG_DEBUG": 1, "LOG_INFO": 1, "LOG_WARNING": 1, "LOG_ERR": 1, "ENVIRONMENT": "test"},
        "Database": {"BACKEND": "LDAP", "SERVER": uri, "ADMIN_USER": bind_dn, "ADMIN_PASSWORD": password,
                     "SERVICE_SUBTREE": subtree, "COOKIE_FILE": state_dir / f"{service}-{type_}.cookie",
                     "TIMEOUT": 10},
        "Service": {"MODUS": modus, "TRANSPORTAPI": transport, "SERVICE": service, "TYPE": type_,
                    "SYSLOG": f"{service}-{type_}"},
        "Gateway": {"HOST": "localhost", "USER": "provisioning", "DSA_FILE": "none"},
    }


def database_keys(server, subtree: str, state_dir: Path, name: str = "test") -> dict[str, Any]:
    """[Database] of a configuration template, pointed at ``server``: what one edits to test a plugin."""
    return {"SERVER": server.ldap_uri, "PORT": None, "ADMIN_USER": server.root_dn,
            "ADMIN_PASSWORD": server.root_pw, "SERVICE_SUBTREE": subtree,
            "COOKIE_FILE": Path(state_dir) / f"{name}.cookie"}


def edit_ini(text: str, changes: dict[str, dict[str, Any]]) -> str:
    """``text`` (a configuration file) with keys set as a person would edit it.

    A key's line (``KEY = value``, or a commented-out ``# KEY = value``) is
    replaced in its section, other lines and comments stay; a key the section
    lacks is added at its end; None removes the key. KeyError for a section
    the text does not have.
    """
    lines = text.splitlines()
    for section, keys in changes.items():
        start = next((i for i, line in enumerate(lines) if line.strip() == f"[{section}]"), None)
        if start is None:
            raise KeyError(f"no section [{section}]")
        end = next((i for i in range(start + 1, len(lines)) if lines[i].strip().startswith("[")), len(lines))
        for key, value in keys.items():
            at = next((i for i in range(start + 1, end)
                       if lines[i].lstrip("#; ").split("=", 1)[0].strip() == key and "=" in lines[i]), None)
            new = [] if value is None else [f"{key} = {value}"]
            if at is None:
                last = end
                while last > start + 1 and not lines[last - 1].strip():
                    last -= 1                       # before the blank lines that end the section
                lines[last:last] = new
            else:
                lines[at:at + 1] = new
            end += len(new) - (0 if at is None else 1)
    return "\n".join(lines) + "\n"


class EditableConfigs:
    """Set/set_global/write over ``service`` and ``global_`` sections written to
    ``config`` and ``global_config`` (the attributes the class using it provides)."""

    service: dict[str, dict[str, Any]]
    global_: dict[str, dict[str, Any]]
    config: Path
    global_config: Path

    def set(self, section: str, **keys: Any):
        """Change keys of the service configuration (None removes one)."""
        _update(self.service, section, keys)
        self.write()
        return self

    def set_global(self, section: str, **keys: Any):
        """Change keys of Global.conf (None removes one)."""
        _update(self.global_, section, keys)
        self.write()
        return self

    def write(self) -> None:
        self.config.write_text(render_ini(self.service))
        self.config.chmod(0o600)                 # it holds the LDAP password
        self.global_config.write_text(render_ini(self.global_))


class ServiceFiles(EditableConfigs):
    """A service configuration and Global.conf under ``root``, rewritten by every change."""

    def __init__(self, root: Path, server, subtree: str, plugin: str,
                 sections: dict[str, dict[str, Any]] | None = None, *, modus: str = "selfcare") -> None:
        service, _, type_ = plugin.partition("/")
        if not service or not type_:
            raise ValueError(f"{plugin!r} is not SERVICE/TYPE")
        self.root = Path(root)
        (self.root / "state").mkdir(parents=True, exist_ok=True)
        self.config = self.root / f"etc/Provisioning/{service}/{type_}.conf"
        self.global_config = self.root / "etc/Provisioning/Global.conf"
        self.config.parent.mkdir(parents=True, exist_ok=True)
        self.service = core_sections(uri=server.ldap_uri, bind_dn=server.root_dn, password=server.root_pw,
                                     subtree=subtree, state_dir=self.root / "state", service=service,
                                     type_=type_, modus=modus)
        for name, keys in (sections or {}).items():
            self.service.setdefault(name, {}).update(keys)
        self.global_ = global_sections(sleep=0.2, attempts=3, operation_sleep=0.2, operation_attempts=50)
        self.write()

def _update(sections: dict, section: str, keys: dict) -> None:
    for key, value in keys.items():
        if value is None:
            sections.setdefault(section, {}).pop(key, None)
        else:
            sections.setdefault(section, {})[key] = value

"""Plugin manager: find the plugin that SERVICE/TYPE names among the entry points."""
from __future__ import annotations

import importlib.metadata
import logging

import pluggy

from provisioning import hookspecs

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "provisioning.plugins"


class PluginError(Exception):
    """The configured plugin cannot be found, loaded or validated."""


def available() -> dict[str, importlib.metadata.EntryPoint]:
    """Installed service plugins by their SERVICE/TYPE name."""
    return {ep.name: ep for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)}


def load(service: str, type_: str) -> pluggy.PluginManager:
    """A plugin manager with the one plugin registered as ``service/type``.

    Names compare without case. A plugin object that is a class is
    instantiated with no arguments, so a plugin can keep state per daemon.
    """
    wanted = f"{service}/{type_}".lower()
    plugins = available()
    matches = [ep for name, ep in plugins.items() if name.lower() == wanted]
    if not matches:
        known = ", ".join(sorted(plugins)) or "none"
        raise PluginError(f'no plugin for SERVICE = {service}, TYPE = {type_} '
                          f'(entry point group {ENTRY_POINT_GROUP}); installed: {known}')
    manager = pluggy.PluginManager(hookspecs.PROJECT)
    manager.add_hookspecs(hookspecs)
    try:
        obj = matches[0].load()
        plugin = obj() if isinstance(obj, type) else obj
        manager.register(plugin, name=matches[0].name)
        # Fail fast on hook implementations that match no spec (typos).
        manager.check_pending()
    except Exception as err:  # noqa: BLE001 - any failure here is a set-up error
        raise PluginError(f"plugin {matches[0].name} ({matches[0].value}) cannot be loaded: {err}") from err
    missing = [v for v in ("add", "modify", "delete")
               if not getattr(manager.hook, f"provisioning_{v}").get_hookimpls()]
    if missing:
        raise PluginError(f"plugin {matches[0].name} implements no hook for: {', '.join(missing)}")
    log.debug("plugin %s loaded from %s", matches[0].name, matches[0].value)
    return manager

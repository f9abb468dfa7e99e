"""Plugin manager: find the plugin that SERVICE/TYPE names, installed or in a checkout's plugins/ folder.

Two places name plugins:

- the ``provisioning.plugins`` entry-point group of installed distributions
  (``pip install``), as ``SERVICE/TYPE = module:object``;
- when provisioning runs from a checkout (``bin/provisioning-daemon``), each
  folder in the checkout's ``plugins/`` (a symbolic link to a plugin kept
  elsewhere, as the wiki's sandbox does it) whose ``__init__.py`` declares
  the same line as a module attribute::

      PROVISIONING_ENTRY_POINT = "Acme/Widget = provisioning_acme_widget.plugin:AcmeWidget"

  The folder is imported under the name the line gives (its first dotted
  part), whatever the folder is called. The line is read without running
  the folder's code; only the plugin the configuration names is imported.

In a checkout its folders come first: what runs from a checkout is the code
in it, even where an older copy of the same plugin is installed.
"""
from __future__ import annotations

import ast
import importlib.abc
import importlib.machinery
import importlib.metadata
import importlib.util
import logging
import sys
from dataclasses import dataclass
from pathlib import Path

import pluggy

from provisioning.hooks import specs as hookspecs

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "provisioning.plugins"
# The module attribute by which a folder in a checkout's plugins/ names its plugin.
FOLDER_ATTRIBUTE = "PROVISIONING_ENTRY_POINT"
CHECKOUT = Path(__file__).resolve().parents[2]      # provisioning/hooks/loading.py


class PluginError(Exception):
    """The configured plugin cannot be found, loaded or validated."""


@dataclass(frozen=True)
class Found:
    """One plugin as a place names it."""

    name: str                                   # SERVICE/TYPE
    entry_point: importlib.metadata.EntryPoint
    folder: Path | None = None                  # in a checkout's plugins/ (None: installed)

    @property
    def value(self) -> str:
        """``module:object``."""
        return self.entry_point.value

    @property
    def origin(self) -> str:
        """Where it comes from: the distribution and its version, or the folder (and where its link leads)."""
        if self.folder is not None:
            target = self.folder.resolve()
            return f"folder {self.folder}" + (f" -> {target}" if target != self.folder else "")
        dist = getattr(self.entry_point, "dist", None)
        return f"distribution {dist.name} {dist.version}" if dist is not None else "an entry point"


def checkout_plugins_folder() -> Path | None:
    """This checkout's plugins/ folder; None when provisioning runs installed, not from a checkout."""
    folder = CHECKOUT / "plugins"
    is_checkout = (CHECKOUT / "setup.cfg").is_file() and (CHECKOUT / "provisioning").is_dir()
    return folder if is_checkout and folder.is_dir() else None


def installed() -> list[Found]:
    """The plugins of installed distributions."""
    return [Found(ep.name, ep) for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)]


def in_folders(folder: Path | None = None) -> tuple[list[Found], list[str]]:
    """The plugins the folders of ``folder`` (default: the checkout's plugins/) declare, and what is wrong.

    A folder without the attribute is not a plugin (say, a package a plugin
    shares); one whose attribute is not a ``SERVICE/TYPE = module:object``
    line is a problem, named with its folder.
    """
    folder = folder or checkout_plugins_folder()
    found: list[Found] = []
    problems: list[str] = []
    if folder is None:
        return found, problems
    for package in sorted(folder.iterdir()):
        init = package / "__init__.py"
        if not init.is_file():
            continue
        try:
            line = declared_entry_point(init)
        except (OSError, SyntaxError, ValueError) as err:
            problems.append(f"{init}: {FOLDER_ATTRIBUTE}: {err}")
            continue
        if line is not None:
            name, _, value = line.partition("=")
            found.append(Found(name.strip(), importlib.metadata.EntryPoint(name.strip(), value.strip(),
                                                                           ENTRY_POINT_GROUP), package))
    return found, problems


def declared_entry_point(init: Path) -> str | None:
    """The ``PROVISIONING_ENTRY_POINT`` string assigned at the top of ``init`` (not run); None if absent."""
    tree = ast.parse(init.read_text(encoding="utf-8"), str(init))
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == FOLDER_ATTRIBUTE
                                                for t in node.targets):
            value = ast.literal_eval(node.value)
            if not isinstance(value, str) or not _well_formed(value):
                raise ValueError(f'{value!r} is not "SERVICE/TYPE = module:object"')
            return value
    return None


def _well_formed(line: str) -> bool:
    name, eq, value = line.partition("=")
    service, slash, type_ = name.strip().partition("/")
    module, colon, obj = value.strip().partition(":")
    return bool(eq and slash and colon and service.isidentifier() and type_.isidentifier()
                and all(part.isidentifier() for part in module.split("."))
                and all(part.isidentifier() for part in obj.split(".")))


def available() -> dict[str, importlib.metadata.EntryPoint]:
    """Every plugin by its SERVICE/TYPE name, the checkout's folders first (see :func:`candidates`)."""
    chosen: dict[str, importlib.metadata.EntryPoint] = {}
    for found in candidates():
        chosen.setdefault(found.name, found.entry_point)
    return chosen


def candidates() -> list[Found]:
    """Every plugin found, in the order they are chosen: the checkout's folders, then installed ones."""
    folders, _ = in_folders()
    return folders + installed()


def find(service: str, type_: str) -> Found | None:
    """The plugin that ``service/type_`` names (case does not matter), as it would be loaded."""
    wanted = f"{service}/{type_}".lower()
    return next((found for found in candidates() if found.name.lower() == wanted), None)


def load(service: str, type_: str) -> pluggy.PluginManager:
    """A plugin manager with the one plugin registered as ``service/type``.

    Names compare without case. A plugin object that is a class is
    instantiated with no arguments, so a plugin can keep state per daemon.
    """
    found = find(service, type_)
    if found is None:
        known = ", ".join(sorted({f.name for f in candidates()})) or "none"
        where = f"entry point group {ENTRY_POINT_GROUP}"
        if checkout_plugins_folder() is not None:
            where += f", or a folder in {checkout_plugins_folder()} declaring {FOLDER_ATTRIBUTE}"
        raise PluginError(f'no plugin for SERVICE = {service}, TYPE = {type_} ({where}); installed: {known}')
    manager = pluggy.PluginManager(hookspecs.PROJECT)
    manager.add_hookspecs(hookspecs)
    try:
        if found.folder is not None:
            _importable(found)
        obj = found.entry_point.load()
        plugin = obj() if isinstance(obj, type) else obj
        manager.register(plugin, name=found.name)
        # Fail fast on hook implementations that match no spec (typos).
        manager.check_pending()
    except Exception as err:  # noqa: BLE001 - any failure here is a set-up error
        raise PluginError(f"plugin {found.name} ({found.value}, {found.origin}) cannot be loaded: {err}") from err
    missing = [v for v in ("add", "modify", "delete")
               if not getattr(manager.hook, f"provisioning_{v}").get_hookimpls()]
    if missing:
        raise PluginError(f"plugin {found.name} implements no hook for: {', '.join(missing)}")
    log.debug("plugin %s loaded from %s (%s)", found.name, found.value, found.origin)
    return manager


class _FolderFinder(importlib.abc.MetaPathFinder):
    """Imports a checkout's plugin folder under the package name its entry point line gives."""

    def __init__(self) -> None:
        self.folders: dict[str, Path] = {}

    def find_spec(self, fullname, path=None, target=None):
        folder = self.folders.get(fullname)
        if folder is None:
            return None
        return importlib.util.spec_from_file_location(fullname, folder / "__init__.py",
                                                      submodule_search_locations=[str(folder)])


_FINDER = _FolderFinder()


def _importable(found: Found) -> None:
    """Make the folder importable under its package name, ahead of any installed copy."""
    package = found.value.partition(":")[0].split(".")[0]
    if package in sys.stdlib_module_names:
        raise PluginError(f"package name {package} (from {FOLDER_ATTRIBUTE} in {found.folder}) is a module of "
                          f"Python's standard library: the folder would hide it from the whole daemon")
    loaded = sys.modules.get(package)
    if loaded is not None and Path(getattr(loaded, "__file__", "") or "").resolve().parent != found.folder.resolve():
        raise PluginError(f"package {package} is already imported from {loaded.__file__}, not from {found.folder}")
    _FINDER.folders[package] = found.folder
    if _FINDER not in sys.meta_path:
        sys.meta_path.insert(0, _FINDER)


def listing() -> list[str]:
    """``provisioning-daemon --list-plugins``: one line per plugin, with where it comes from; then problems.

    An installed plugin whose code is a checkout folder listed already (an
    editable install of this checkout) is said on that folder's line.
    """
    folders, problems = in_folders()
    shown: dict[str, list[str]] = {}
    for found in folders:
        shown.setdefault(found.name.lower(), [f"{found.name:<24} {found.value:<56} {found.origin}"])
    for found in installed():
        first = next((f for f in folders if f.name.lower() == found.name.lower()), None)
        if first is None:
            shown.setdefault(found.name.lower(), []).append(f"{found.name:<24} {found.value:<56} {found.origin}")
        elif found.value == first.value and _package_folder(found) == first.folder.resolve():
            shown[found.name.lower()][0] += f" (also installed: {found.origin.removeprefix('distribution ')})"
        else:
            shown[found.name.lower()].append(f"{found.name:<24} {found.value:<56} {found.origin}   "
                                             f"(not used: the checkout's folder comes first)")
    lines = [line for group in shown.values() for line in group]
    if not lines:
        lines.append(f"no plugins installed (entry point group {ENTRY_POINT_GROUP})")
    return lines + [f"warning: {problem}" for problem in problems]


def _package_folder(found: Found) -> Path | None:
    """The folder the plugin's package would be imported from (found, not run)."""
    try:
        spec = importlib.util.find_spec(found.value.partition(":")[0].split(".")[0])
    except (ImportError, ValueError):
        return None
    return Path(spec.origin).resolve().parent if spec is not None and spec.origin else None

"""The files the package ships besides its code, found through the package itself.

The daemon and its plugin need a few files at run time: the configspecs, the
rsnapshot template, our schema LDIF, and for operators the example
configuration and the systemd unit. They are found with importlib.resources
relative to the imported ``provisioning`` package, never relative to a source
checkout, so an installed wheel works wherever it is installed.

``provisioning/etc`` is a symbolic link to the repository's top-level ``etc/``
(the one copy of those files in the repository); building a wheel copies the
whole tree into the package (setup.cfg, package_data). In a checkout the link
leads to the same files, so a checkout and an installation find them alike.
"""
from __future__ import annotations

import importlib.resources
from pathlib import Path

# The shipped configuration tree, relative to the package: etc/Provisioning/...
ETC = "etc"
CONFIGSPEC = "config/specs"
# The package these files ship with (this module lives in one of its subpackages).
PACKAGE = "provisioning"


class ResourceMissing(Exception):
    """A file the package should ship is not there (a broken installation)."""


def package_root() -> Path:
    """The folder of the imported provisioning package."""
    root = importlib.resources.files(PACKAGE)
    if not isinstance(root, Path):
        # A zipped installation: the daemon hands these paths to other
        # programs (rsnapshot, slapd), which need real files.
        raise ResourceMissing(f"the provisioning package is not installed as files ({root}): "
                              f"install it with pip into a virtualenv")
    return root


def etc_root() -> Path:
    """The shipped configuration tree (etc/ of the source), with links resolved."""
    return (package_root() / ETC).resolve()


def etc_path(relative: str) -> Path:
    """A file or folder of the shipped configuration tree, e.g. ``Provisioning/Global.conf``.

    The path is returned whether or not it exists; callers that need the
    file use shipped_file().
    """
    return etc_root() / relative


def shipped_file(relative: str) -> Path:
    """A file of the shipped configuration tree; ResourceMissing if it is not there."""
    path = etc_path(relative)
    if not path.is_file():
        raise ResourceMissing(f"{path} is missing: the installation of provisioning is incomplete "
                              f"(reinstall the package)")
    return path


def shipped_files() -> list[str]:
    """Every file of the shipped configuration tree, relative to it, sorted."""
    root = etc_root()
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def configspec_text(name: str) -> str:
    """The text of a configspec of the core (``service.spec``, ``global.spec``)."""
    return importlib.resources.files(PACKAGE).joinpath(CONFIGSPEC, name).read_text(encoding="utf-8")

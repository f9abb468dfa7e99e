"""The Debian package, built from this checkout the way Debian builds it (for t/test_deb.py and the
container tests that install it).

A copy of the checkout (the files git sees, committed or not) is built with
``dpkg-buildpackage -us -uc -b`` in a clean environment: Debian's python3 and
tools only, whatever virtualenv or other Python runs the tests. The build
depends on what bin/setup installs (debhelper, dh-python,
pybuild-plugin-pyproject).
"""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# Debian's own: no virtualenv, no pyenv, no ~/.local on the way.
CLEAN_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root", "LC_ALL": "C.UTF-8",
             "DEBIAN_FRONTEND": "noninteractive"}
BUILD_TIMEOUT = 600


def copy_source(target: Path) -> None:
    """The checkout's files as git sees them (committed or not, ignored ones left out), links as links."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                            capture_output=True, check=True, timeout=60).stdout.decode().split("\0")
    for name in filter(None, listed):
        path = REPO / name
        if not path.is_symlink() and not path.is_file():
            continue            # deleted in the working tree
        (target / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target / name, follow_symlinks=False)


def build(work: Path) -> Path:
    """Build the package in ``work``; the .deb's path. AssertionError with the build's log if it fails."""
    source = work / "provisioning"
    copy_source(source)
    result = subprocess.run(["dpkg-buildpackage", "-us", "-uc", "-b"], cwd=source, env=CLEAN_ENV,
                            capture_output=True, text=True, timeout=BUILD_TIMEOUT)
    assert result.returncode == 0, f"dpkg-buildpackage failed:\n{result.stdout[-5000:]}\n{result.stderr[-3000:]}"
    debs = sorted(work.glob("provisioning_*_all.deb"))
    assert len(debs) == 1, debs
    return debs[0]

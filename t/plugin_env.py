"""A fresh virtualenv that sees this one's packages, for installing a plugin without touching the test venv.

``python -m venv --without-pip`` plus a .pth file that adds this
interpreter's site-packages as a site folder (so its .pth files, among them
the editable install of provisioning, work there too). Plugins are installed
into it with this venv's pip (``pip --python``): the test venv is never
changed, so there is nothing to uninstall; the folder goes with the test's.
"""
from __future__ import annotations

import os
import site
import subprocess
import sys
from pathlib import Path

PIP_TIMEOUT = 300


class PluginEnv:
    """``packages_only``: the test venv's site-packages as a plain path entry, its .pth files not run.

    Then its packages (python-ldap, pluggy, configobj, python-daemon,
    pytest) import, but the editable install of provisioning does not: an
    interpreter with nothing but the dependencies, as a checkout needs.
    """

    def __init__(self, root: Path, *, packages_only: bool = False) -> None:
        self.root = root
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True, timeout=60)
        self.python = root / "bin/python"
        site = subprocess.run([str(self.python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                              check=True, capture_output=True, text=True, timeout=60).stdout.strip()
        # Every site folder of this interpreter: a virtualenv has one, Debian's python3 several
        # (its python3-* packages are in /usr/lib/python3/dist-packages, not in sysconfig's purelib).
        self.packages_only = packages_only
        parents = _site_folders(with_pythonpath=not packages_only)
        lines = parents if packages_only else [f"import site; site.addsitedir({p!r})" for p in parents]
        Path(site, "_provisioning_test_parent.pth").write_text("".join(f"{line}\n" for line in lines))

    def pip_install(self, folder: Path) -> subprocess.CompletedProcess:
        """``pip install FOLDER`` into this environment, as a plugin author would run it."""
        return subprocess.run([sys.executable, "-m", "pip", "--python", str(self.python), "install", str(folder)],
                              capture_output=True, text=True, timeout=PIP_TIMEOUT)

    def run(self, *args: str, cwd: Path | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
        env = dict(os.environ)
        if self.packages_only:
            env.pop("PYTHONPATH", None)         # bin/system-python's: it holds provisioning
        return subprocess.run([str(self.python), *args], capture_output=True, text=True, cwd=cwd, timeout=timeout,
                              env=env)


def _site_folders(*, with_pythonpath: bool) -> list[str]:
    """This interpreter's site folders (and PYTHONPATH's, where bin/system-python puts provisioning)."""
    found = [*(os.environ.get("PYTHONPATH", "").split(os.pathsep) if with_pythonpath else []),
             *site.getsitepackages()]
    return [folder for folder in dict.fromkeys(found) if folder and os.path.isdir(folder)]

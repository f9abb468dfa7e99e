"""Debian 13 (Python 3.13, OpenLDAP 2.6, its python3-* packages): the README's commands and the package.

A Debian 13 root with what ``bin/setup`` installs from Debian (debootstrap,
then ``bin/setup --packages`` run in it; made once and cached:
t/debian_root.py) gets a copy of this checkout (the files git sees) on an
overlay, and there, in a container sharing this machine's network:

1. ``bin/setup`` as a new user runs it: the virtualenv (Python 3.13) with the
   checkout and the test tools, from PyPI;
2. in that virtualenv, the fast tier (``-m quick``), the installed package
   (t/test_installed.py: a wheel built without build isolation, the wiki's
   walk-through with its commands) and the wiki's four LDIF steps (t/test_tools.py);
3. the fast tier again on Debian 13's own python3-* packages (bin/system-python);
4. t/test_deb.py with the .deb built here on Debian 12 (one package for both
   releases): Debian 13's lintian, ``apt install``, the wiki's cycle with
   /usr/bin's commands, ``systemd-analyze verify``, the purge.

The whole suite does not fit the test command's time on two cores a second
time; the parts it leaves out (servers, daemons, faults) are the same code on
either Python, and part 1 of bin/test runs them. Each inner run's output
goes to stdout as it comes (bin/test runs this module with -s); a failure
shows its end.
"""
from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

import debian_build
import debian_root
import nspawn

pytestmark = pytest.mark.skipif(os.environ.get("PROVISIONING_TEST_CONTAINERS") != "1",
                                reason="runs the suite in a Debian 13 container (a debootstrapped root, cached "
                                       f"in {debian_root.CACHE}): bin/test runs it (PROVISIONING_TEST_CONTAINERS=1)")

ROOT = debian_root.DEBIAN13_SETUP
CHECKOUT = "/root/provisioning"
WORKERS = os.environ.get("PROVISIONING_TEST_WORKERS", "4")
# bin/setup builds python-ldap (the first time: pip's cache keeps the wheel); each run is one part of the suite.
TIMEOUT = 900


@dataclass
class Debian13:
    root: Path
    deb: Path

    def run(self, *argv: str, env: dict[str, str] | None = None) -> None:
        binds, trust = nspawn.trust_bind()
        result = nspawn.run(self.root, argv, binds=debian_root.cache_binds(ROOT.release),
                            read_only=[*binds, (self.deb.parent, "/srv/deb")],
                            # nspawn's /tmp is a tmpfs mounted nodev: the jails' dev/null would not open there.
                            env={**trust, "TMPDIR": "/var/tmp", **(env or {})},
                            cwd=CHECKOUT, timeout=TIMEOUT, echo=nspawn.echo_to_stdout)
        assert result.returncode == 0, f"{' '.join(argv)} in Debian 13 exited {result.returncode}:\n" \
                                       + result.stdout[-6000:]


@pytest.fixture(scope="module")
def debian13(tmp_path_factory) -> Debian13:
    if os.environ.get("PYTEST_XDIST_WORKER"):
        pytest.fail("one container for the module: run it in one process (without -n), as bin/test does")
    work = tmp_path_factory.mktemp("debian13")
    deb = debian_build.build(work / "deb")
    with debian_root.cached(ROOT) as lower, nspawn.overlay(lower, work / "overlay") as root:
        checkout = root / CHECKOUT.lstrip("/")
        debian_build.copy_source(checkout)
        _commit(checkout)
        yield Debian13(root, deb)


def _commit(checkout: Path) -> None:
    """The copy as the README's reader has it, a git clone with a commit (t/test_installed.py builds its
    wheel from the files git lists)."""
    for argv in (["init", "-q"], ["add", "-A"], ["-c", "user.name=bin/test", "-c", "user.email=bin-test@localhost",
                                                  "commit", "-q", "-m", "this checkout, copied"]):
        subprocess.run(["git", "-C", str(checkout), *argv], check=True, capture_output=True, timeout=120)


def test_bin_setup_makes_a_python_3_13_virtualenv(debian13):
    debian13.run("bin/setup")
    debian13.run(".venv/bin/python", "-c", "import sys, setuptools, provisioning; "
                 "assert sys.version_info[:2] == (3, 13), sys.version")


def test_the_fast_tier_the_installed_package_and_the_wikis_steps_in_the_virtualenv(debian13):
    debian13.run(".venv/bin/python", "-m", "pytest", "-n", WORKERS, "-p", "no:cacheprovider", "-m", "quick", "t")
    debian13.run(".venv/bin/python", "-m", "pytest", "-n", WORKERS, "-p", "no:cacheprovider",
                 "t/test_installed.py", "t/test_tools.py")


def test_the_fast_tier_on_debian_13s_packages(debian13):
    debian13.run("bin/system-python", "-m", "pytest", "-n", WORKERS, "-p", "no:cacheprovider", "-m", "quick", "t")


def test_the_debian_12_package_on_debian_13(debian13):
    debian13.run("bin/system-python", "-m", "pytest", "-p", "no:cacheprovider", "t/test_deb.py",
                 env={"PROVISIONING_TEST_DEB": "1", "PROVISIONING_TEST_DEB_FILE": f"/srv/deb/{debian13.deb.name}"})

"""Debian roots made with debootstrap, cached between runs, for the container tests.

A root is made once per recipe (release, packages, how it is made) and kept
under CACHE/roots/<release>-<key>; the tests never write into it: they boot or
run an overlay over it (t/nspawn.py). A fresh machine starts with an empty
cache, so its first run pays for the build (measured: about 40 s for a Debian 12
root with systemd; a Debian 13 root with bin/setup's packages takes longer).

A root is built in CACHE/roots/.building-*, and renamed to its final name only
once complete: a root that is there is whole, and a build that died leaves a
.building-* folder that the next build removes (after unmounting whatever the
dead build left mounted in it, and never past a mount point). Builds hold
CACHE/roots/.build.lock; a test that uses a root holds a shared lock on
<root>.lock, so that an older root of the same release is removed only when no
run (of this or another checkout) uses it.

What is downloaded is kept too: debootstrap's and apt's .deb files in
CACHE/apt/<release>, pip's cache in CACHE/pip/<release> (t/nspawn.py binds
them into the containers).
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import nspawn

REPO = Path(__file__).resolve().parents[1]
CACHE = Path(os.environ.get("PROVISIONING_TEST_CACHE", "/var/cache/provisioning-test"))
# Changes whenever the way a root is made changes, so that older roots are not used.
RECIPE_VERSION = "1"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
BUILD_TIMEOUT = 1200
ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C.UTF-8", "DEBIAN_FRONTEND": "noninteractive",
       "HOME": "/root"}


@dataclass(frozen=True)
class Recipe:
    """What a root is: a Debian release (codename), minbase plus ``packages``, and with ``setup`` also
    bin/setup's Debian packages, installed by bin/setup itself (its --packages step)."""

    release: str
    packages: tuple[str, ...] = ()
    setup: bool = False

    def key(self) -> str:
        parts = [RECIPE_VERSION, self.release, mirror(), " ".join(sorted(self.packages))]
        if self.setup:
            parts.append((REPO / "bin/setup").read_text())
        return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:12]

    @property
    def name(self) -> str:
        return f"{self.release}-{self.key()}"


# The roots the container tests use: a booted Debian 12 (t/test_container_systemd.py) and a
# Debian 13 with bin/setup's packages (t/test_container_debian13.py).
DEBIAN12_SYSTEMD = Recipe("bookworm", packages=("systemd-sysv",))
DEBIAN13_SETUP = Recipe("trixie", setup=True)


def mirror() -> str:
    """This machine's Debian mirror (its apt sources), or $PROVISIONING_TEST_MIRROR, or Debian's own."""
    if os.environ.get("PROVISIONING_TEST_MIRROR"):
        return os.environ["PROVISIONING_TEST_MIRROR"].rstrip("/")
    sources = sorted(Path("/etc/apt").glob("sources.list.d/*.sources")) + [Path("/etc/apt/sources.list")]
    for path in sources:
        text = path.read_text() if path.is_file() else ""
        found = re.search(r"^(?:URIs:|deb)\s+(?:\[[^]]*\]\s+)?(https?://\S+/debian)/?(?:\s|$)", text, re.M)
        if found:
            return found.group(1)
    return DEFAULT_MIRROR


def cache_binds(release: str) -> list[nspawn.Bind]:
    """The download caches, bound where apt and pip (as root) keep what they fetch."""
    return [(downloads("apt", release), "/var/cache/apt/archives"), (downloads("pip", release), "/root/.cache/pip")]


def downloads(kind: str, release: str) -> Path:
    """A folder of the cache for what is downloaded (kind: apt, pip), kept between runs."""
    folder = CACHE / kind / release
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@contextlib.contextmanager
def cached(recipe: Recipe) -> Iterator[Path]:
    """The root of ``recipe``, built if the cache has none; it stays while the ``with`` block runs."""
    roots = CACHE / "roots"
    roots.mkdir(parents=True, exist_ok=True)
    root = roots / recipe.name
    if not root.is_dir():
        with _locked(roots / ".build.lock", fcntl.LOCK_EX):
            if not root.is_dir():
                _remove_unfinished(roots)
                _build(recipe, roots)
            _prune(roots, recipe)
    with _locked(roots / f"{recipe.name}.lock", fcntl.LOCK_SH):
        yield root


@contextlib.contextmanager
def _locked(path: Path, how: int) -> Iterator[None]:
    with open(path, "a") as handle:
        fcntl.flock(handle, how)
        yield


def _build(recipe: Recipe, roots: Path) -> None:
    work = Path(tempfile.mkdtemp(prefix=f".building-{recipe.name}-", dir=roots))
    root = work / "root"
    _debootstrap(recipe, root)
    _write_sources(recipe.release, root)
    if recipe.setup:
        _install_setup_packages(recipe.release, root)
    root.rename(roots / recipe.name)
    work.rmdir()


def _debootstrap(recipe: Recipe, root: Path) -> None:
    argv = ["debootstrap", "--variant=minbase", f"--cache-dir={downloads('apt', recipe.release)}"]
    if recipe.packages:
        argv.append("--include=" + ",".join(recipe.packages))
    result = subprocess.run([*argv, recipe.release, str(root), mirror()], env=ENV, capture_output=True,
                            text=True, timeout=BUILD_TIMEOUT)
    # debootstrap mounts /proc and /sys in the root while it works, and a failure may leave them.
    _unmount_below(root)
    assert result.returncode == 0, f"debootstrap {recipe.release} failed:\n{result.stdout[-3000:]}{result.stderr}"


def _write_sources(release: str, root: Path) -> None:
    """The release, its updates and its security updates, as a Debian server has them."""
    base = mirror()
    security = base.rsplit("/", 1)[0] + "/debian-security"
    (root / "etc/apt/sources.list").write_text(
        f"deb {base} {release} main\ndeb {base} {release}-updates main\n"
        f"deb {security} {release}-security main\n")


def _install_setup_packages(release: str, root: Path) -> None:
    """bin/setup --packages, run in the root: what the README's commands install there, installed their way."""
    setup = root / "root/bin-setup/bin/setup"
    setup.parent.mkdir(parents=True)
    shutil.copy2(REPO / "bin/setup", setup)
    result = nspawn.run(root, ["sh", "/root/bin-setup/bin/setup", "--packages"], binds=cache_binds(release),
                        timeout=BUILD_TIMEOUT)
    shutil.rmtree(setup.parents[1])
    assert result.returncode == 0, f"bin/setup --packages in {release} failed:\n{result.stdout[-5000:]}"


def _remove_unfinished(roots: Path) -> None:
    """Folders of builds that died (the caller holds the build lock: no build is running)."""
    for work in roots.glob(".building-*"):
        remove_tree(work)


def _prune(roots: Path, recipe: Recipe) -> None:
    """Older roots of this release, unless a run still uses them."""
    for old in roots.glob(f"{recipe.release}-*"):
        if old.name == recipe.name or not old.is_dir():
            continue
        with open(roots / f"{old.name}.lock", "a") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue
            remove_tree(old)
            (roots / f"{old.name}.lock").unlink()


def remove_tree(path: Path) -> None:
    """``path`` and everything below it, but nothing mounted there (unmounted first, never crossed)."""
    _unmount_below(path)
    subprocess.run(["rm", "-rf", "--one-file-system", "--", str(path)], check=True, timeout=600)


def _unmount_below(path: Path) -> None:
    for point in sorted(_mounts_below(path), key=lambda p: -len(p.parts)):
        subprocess.run(["umount", "--lazy", str(point)], timeout=60)


def _mounts_below(path: Path) -> list[Path]:
    resolved = path.resolve()
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = Path(line.split()[4].encode().decode("unicode_escape"))
        if point == resolved or resolved in point.parents:
            points.append(point)
    return points


def main() -> int:
    """Build (or find) the container tests' roots: bin/test starts this beside the suite's first run,
    so that a fresh machine downloads and unpacks them while the suite runs."""
    for recipe in (DEBIAN12_SYSTEMD, DEBIAN13_SETUP):
        started = time.monotonic()
        with cached(recipe) as root:
            print(f"debian_root: {root} ready in {time.monotonic() - started:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

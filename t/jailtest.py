"""What the jail tests share: a program of their own to upgrade, and looks at jails and the image store."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import urllib.request
from pathlib import Path

import pytest

from helpers import assert_done

UIDS = ["3723701", "3723702", "3723703"]


@pytest.fixture
def tool(tmp_path) -> Path:
    """A program of the test's own for JAIL_PROGRAMS (a copy of true), to "upgrade" later."""
    folder = tmp_path / "tools"
    folder.mkdir()
    path = folder / "jailtool"
    shutil.copy2("/usr/bin/true", path)
    return path


@pytest.fixture
def jails(host, tool):
    """The host with the shipped builder (CREATE_CHROOT_CMD left out) and a quick jail job."""
    host.set("Backup", CREATE_CHROOT_CMD="", JAIL_PROGRAMS=f"sh {tool}", JAIL_CHECK_SECONDS=0.5)
    return host


def upgrade(tool: Path, to: str = "/usr/bin/false") -> None:
    """What apt does to a program: a new file renamed over the old one."""
    new = tool.with_name(tool.name + ".dpkg-new")
    shutil.copy(to, new)
    new.chmod(0o755)
    os.replace(new, tool)


def jail(host, uid: str) -> Path:
    return host.home(uid).parent.parent


def store(host) -> Path:
    return host.layout.backup_root / ".jail-images"


def images(host) -> list[Path]:
    return sorted(p for p in store(host).iterdir() if p.is_dir() and not p.name.startswith("."))


def figures(host) -> dict:
    """The jail job's status file ({} until it wrote one)."""
    path = store(host) / "status.json"
    return json.loads(path.read_text()) if path.exists() else {}


def inode(path: Path) -> tuple[int, int]:
    info = path.lstat()
    return info.st_dev, info.st_ino


def content(host) -> str:
    """The current image's content (changes when a new image is made)."""
    return json.loads((store(host) / "current").read_text())["content"]


def in_current_image(host, uid: str, relative: str) -> bool:
    """Whether the jail's file is the current image's (the newest content's first image)."""
    if not (store(host) / "current").exists():
        return False
    image = store(host) / f"{content(host)[:12]}-1" / "root" / relative
    return image.exists() and inode(jail(host, uid) / relative) == inode(image)


def run_in(host, uid: str, *argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(["chroot", str(jail(host, uid)), *argv], capture_output=True, text=True, timeout=30)


def provision(directory, uids=UIDS) -> None:
    dns = [directory.add(uid) for uid in uids]
    for dn in dns:
        assert_done(directory.wait_mode(dn, "added"), "added")


def scrape(port: int) -> dict[str, float]:
    """The jail gauges of the daemon's metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        lines = response.read().decode().splitlines()
    return {line.split()[0]: float(line.split()[1]) for line in lines if line.startswith("provisioning_jails")}

"""Containers for the tests, with systemd-nspawn: a command run in a root, or a root booted with systemd.

The roots come from t/debian_root.py's cache and are never written: a test
works on an overlay over one (``overlay``), which goes when the test ends.
Containers share this machine's network (no --private-network): a slapd on
127.0.0.1 here is on 127.0.0.1 there, and apt and pip reach their registries
as this machine does (with its trust store, when pip here is given one).

--register=no and --keep-unit: nothing of machined or of a host systemd is
needed (this machine's PID 1 may not be systemd). A booted container is entered
with nsenter (its PID 1's namespaces); no machinectl.
"""
from __future__ import annotations

import contextlib
import itertools
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Callable, Iterator, Sequence

from provisioning.testing import wait_until

PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
ENV = {"PATH": PATH, "LC_ALL": "C.UTF-8", "HOME": "/root", "DEBIAN_FRONTEND": "noninteractive"}
# Where this machine's CA bundle for pip is put, when it has one (a network whose TLS is inspected).
TRUST = "/run/host-trust.crt"
_names = itertools.count()

Bind = tuple[Path, str]          # (folder or file here, path in the container)


def trust_bind() -> tuple[list[Bind], dict[str, str]]:
    """pip's CA bundle here ($PIP_CERT), bound read-only into a container and named to its pip."""
    bundle = os.environ.get("PIP_CERT")
    if bundle and Path(bundle).is_file():
        return [(Path(bundle), TRUST)], {"PIP_CERT": TRUST}
    return [], {}


def _name() -> str:
    return f"provisioning-test-{os.getpid()}-{next(_names)}"


def _nspawn(root: Path, name: str, binds: Sequence[Bind], read_only: Sequence[Bind], env: dict[str, str],
            cwd: str) -> list[str]:
    argv = ["systemd-nspawn", "--quiet", "--register=no", "--keep-unit", "--console=pipe", f"--directory={root}",
            f"--machine={name}", f"--chdir={cwd}"]
    argv += [f"--bind={here}:{there}" for here, there in binds]
    argv += [f"--bind-ro={here}:{there}" for here, there in read_only]
    argv += [f"--setenv={key}={value}" for key, value in env.items()]
    return argv


def _forget(name: str) -> None:
    """nspawn leaves its propagation folder when /run is not a tmpfs ("we can't allow that"): ours to remove."""
    folder = Path("/run/systemd/nspawn/propagate") / name
    if folder.is_dir():
        subprocess.run(["rm", "-rf", "--one-file-system", "--", str(folder)], timeout=60)


def run(root: Path, argv: Sequence[str], *, binds: Sequence[Bind] = (), read_only: Sequence[Bind] = (),
        env: dict[str, str] | None = None, cwd: str = "/", timeout: float,
        echo: Callable[[str], None] | None = None) -> subprocess.CompletedProcess:
    """``argv`` in ``root`` (not booted); stdout and stderr together in the result, each line to ``echo`` too.

    After ``timeout`` s the container is ended (SIGTERM to nspawn kills all of it) and AssertionError says so.
    """
    name = _name()
    command = [*_nspawn(root, name, binds, read_only, {**ENV, **(env or {})}, cwd), "--", *argv]
    lines: list[str] = []
    proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, errors="replace", env=ENV)
    expired: list[bool] = []
    timer = threading.Timer(timeout, lambda: (expired.append(True), proc.send_signal(signal.SIGTERM)))
    timer.start()
    try:
        for line in proc.stdout:
            lines.append(line)
            if echo:
                echo(line)
        proc.wait()
    finally:
        timer.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        _forget(name)
    if expired:
        raise AssertionError(f"{' '.join(argv)} in {root}: still running after {timeout:g} s\n"
                             + "".join(lines[-60:]))
    return subprocess.CompletedProcess(argv, proc.returncode, "".join(lines), "")


def echo_to_stdout(line: str) -> None:
    """For ``run(echo=...)``: the container's lines as they come (seen with pytest -s)."""
    sys.stdout.write(line)
    sys.stdout.flush()


@contextlib.contextmanager
def overlay(lower: Path, work: Path) -> Iterator[Path]:
    """A writable view of ``lower`` (left as it is) in ``work``; unmounted and removed at the end."""
    upper, scratch, merged = work / "upper", work / "work", work / "merged"
    for folder in (upper, scratch, merged):
        folder.mkdir(parents=True)
    subprocess.run(["mount", "-t", "overlay", "overlay", "-o",
                    f"lowerdir={lower},upperdir={upper},workdir={scratch}", str(merged)], check=True, timeout=60)
    try:
        yield merged
    finally:
        subprocess.run(["umount", str(merged)], timeout=60)
        if os.path.ismount(merged):
            subprocess.run(["umount", "--lazy", str(merged)], timeout=60)
        subprocess.run(["rm", "-rf", "--one-file-system", "--", str(work)], timeout=600)


class Booted:
    """``root`` booted with its own systemd (systemd-nspawn -b); commands run in it with ``exec``."""

    def __init__(self, root: Path, console: Path, binds: Sequence[Bind] = (),
                 read_only: Sequence[Bind] = ()) -> None:
        self.root, self.console, self.name = root, console, _name()
        self.binds, self.read_only = binds, read_only
        self.proc: subprocess.Popen | None = None
        self.leader = 0

    def start(self, timeout: float = 120) -> "Booted":
        command = [*_nspawn(self.root, self.name, self.binds, self.read_only, {}, "/"), "--boot"]
        with open(self.console, "w") as out:
            self.proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                         env=ENV)
        try:
            self.leader = wait_until(self._find_leader, "the container's systemd to start", timeout)
            # "offline" until systemd listens (a moment after its exec); then --wait waits for the boot's end.
            state = wait_until(lambda: self._state() != "offline" and self._state(), "systemd to answer", timeout)
            assert state == "running", (f"the container booted {state}:\n"
                                        + self.exec(["systemctl", "--failed", "--no-pager"]).stdout)
        except BaseException:
            self.kill()
            raise
        return self

    def _state(self) -> str:
        return self.exec(["systemctl", "is-system-running", "--wait"], timeout=300).stdout.strip()

    def _find_leader(self) -> int:
        """The container's PID 1: the process below nspawn in another PID namespace that runs systemd
        (before its exec it is still a copy of nspawn, in the container's namespaces but not its root)."""
        assert self.proc.poll() is None, f"systemd-nspawn exited {self.proc.returncode}:\n{self.console.read_text()}"
        own = os.readlink(f"/proc/{self.proc.pid}/ns/pid")
        todo = [self.proc.pid]
        while todo:
            pid = todo.pop(0)
            with contextlib.suppress(OSError):
                if os.readlink(f"/proc/{pid}/ns/pid") != own:
                    return pid if Path(f"/proc/{pid}/comm").read_text().strip() == "systemd" else 0
                todo += [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
        return 0

    def exec(self, argv: Sequence[str], *, timeout: float = 60, env: dict[str, str] | None = None,
             check: bool = False) -> subprocess.CompletedProcess:
        """``argv`` in the container (all its namespaces, its root), as root; the result with text output."""
        command = ["nsenter", f"--target={self.leader}", "--all", "--root", "--wd=/", "--", *argv]
        result = subprocess.run(command, env={**ENV, **(env or {})}, capture_output=True, text=True,
                                errors="replace", timeout=timeout)
        assert not check or result.returncode == 0, f"{' '.join(argv)}: exit {result.returncode}\n" \
                                                    f"{result.stdout}{result.stderr}"
        return result

    def path(self, inside: str) -> Path:
        """A path of the container, as this machine sees it (through the overlay)."""
        return self.root / inside.lstrip("/")

    def stop(self, timeout: float = 90) -> int:
        """Power off (systemd stops every unit); the container is killed if it has not ended by ``timeout``."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)           # nspawn: SIGRTMIN+3 to the container, a clean poweroff
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.send_signal(signal.SIGTERM)       # a second one ends it at once
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.leader, signal.SIGKILL)
            self.proc.wait(30)
            raise AssertionError(f"the container did not power off within {timeout:g} s") from None
        finally:
            _forget(self.name)

    def kill(self) -> None:
        """End the container at once (a boot that failed): nspawn and, with it, everything in it."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.send_signal(signal.SIGTERM)       # the second one: no clean poweroff
            if self.leader:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.leader, signal.SIGKILL)
            self.proc.wait(60)
        _forget(self.name)

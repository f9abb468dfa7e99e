"""Faults on purpose, at the moment a test chooses.

- ``Proxy``: a TCP relay between the daemon and slapd that the test cuts and
  restores (every connection closed, new ones refused) - a network fault
  without touching slapd; or whose sync streams it holds (hold_streams: what
  slapd sends on a connection that asked for a sync search is kept back), so
  that the daemon's own writes go through and their echoes do not.
- ``PauseAt``: a stand-in command that records its call and, on its first
  call, stops until the test has put its fault in place. The daemon is then
  exactly between the plugin's work and the outcome write.
"""
from __future__ import annotations

import select
import shlex
import socket
import threading
from pathlib import Path

from helpers import wait_until


SYNC_REQUEST_OID = b"1.3.6.1.4.1.4203.1.9.1.1"


class Proxy:
    """127.0.0.1:<port> -> target, with cut() and restore()."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._pairs: list[tuple[socket.socket, socket.socket]] = []
        self._lock = threading.Lock()
        self._cut = False
        self._hold = threading.Event()
        self._frozen = threading.Event()
        self._hold_after: bytes | None = None
        self._running = True
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    @property
    def uri(self) -> str:
        return f"ldap://127.0.0.1:{self.port}/"

    def cut(self) -> None:
        """Close every relayed connection now; refuse new ones until restore()."""
        with self._lock:
            self._cut = True
            pairs, self._pairs = self._pairs, []
        for pair in pairs:
            for sock in pair:
                _close(sock)

    def hold_streams(self, after: bytes | None = None) -> None:
        """Keep back what slapd sends on sync stream connections from now on (never delivered).

        ``after``: only once slapd has sent these bytes on a stream (an entry's
        DN: the daemon sees the entry, and none of its own writes' echoes).
        """
        self._hold_after = after
        self._hold.set()

    def freeze(self) -> None:
        """From now on nothing passes either way, and no connection is closed (a silent firewall)."""
        self._frozen.set()

    def restore(self) -> None:
        with self._lock:
            self._cut = False

    def stop(self) -> None:
        self._running = False
        self.cut()
        _close(self._listener)

    def _serve(self) -> None:
        while self._running:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self.target, timeout=5)
            except OSError:
                _close(client)
                continue
            with self._lock:
                # Checked under the lock that cut() takes: a connection accepted
                # while cut() ran must not slip through after it.
                refused = self._cut
                if not refused:
                    self._pairs.append((client, server))
            if refused:
                _close(client)
                _close(server)
                continue
            threading.Thread(target=self._relay, args=(client, server), daemon=True).start()

    def _relay(self, client: socket.socket, server: socket.socket) -> None:
        peers = {client: server, server: client}
        stream = False                   # the client asked for a sync search (the control's OID went by)
        try:
            while True:
                ready, _, _ = select.select(list(peers), [], [], 1.0)
                for sock in ready:
                    data = sock.recv(65536)
                    if not data:
                        return
                    if self._frozen.is_set():
                        continue
                    stream = stream or (sock is client and SYNC_REQUEST_OID in data)
                    if sock is server and stream and self._hold.is_set():
                        if self._hold_after is None:
                            continue
                        if self._hold_after in data:
                            self._hold_after = None           # this one goes through, then nothing
                    peers[sock].sendall(data)
        except (OSError, ValueError):
            return
        finally:
            _close(client)
            _close(server)


def _close(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()


class PauseAt:
    """A stand-in command that pauses on its first call until the test releases it.

    ``when``: pause only on the first call that has this argument. ``then``:
    the real command to run afterwards, with the same arguments.
    """

    def __init__(self, folder: Path, name: str, *, when: str | None = None, then: str | None = None) -> None:
        self.command = folder / name
        self.calls = folder / f"{name}.calls"
        self.paused = folder / f"{name}.paused"
        self.release_file = folder / f"{name}.release"
        q = shlex.quote
        match = (f'case " $* " in *" {when} "*) ;; *) matched=no ;; esac' if when else "")
        finish = f'exec {q(then)} "$@"' if then else "exit 0"
        self.command.write_text(f"""#!/bin/sh
line='' sep=''
for arg in "$0" "$@"; do line=$line$sep$arg; sep='\t'; done
printf '%s\\n' "$line" >> {q(str(self.calls))}
matched=yes
{match}
if [ "$matched" = yes ] && [ ! -e {q(str(self.paused))} ]; then
    : > {q(str(self.paused))}
    while [ ! -e {q(str(self.release_file))} ]; do sleep 0.01; done
fi
{finish}
""")
        self.command.chmod(0o755)

    def wait_paused(self, timeout: float = 20) -> None:
        wait_until(self.paused.exists, f"{self.command.name} to be called", timeout)

    def release(self) -> None:
        self.release_file.touch()

    def call_args(self) -> list[list[str]]:
        if not self.calls.exists():
            return []
        return [line.split("\t")[1:] for line in self.calls.read_text().splitlines() if line]

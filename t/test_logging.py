"""Logging to syslog: the ident, the level gates and redaction, through a real datagram socket."""
from __future__ import annotations

import logging
import os
import socket

import pytest

from provisioning.log import LevelFlags, setup


@pytest.fixture
def syslog_socket(tmp_path):
    """A unix datagram socket standing in for /dev/log."""
    path = tmp_path / "log"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(2)
    yield path, sock
    sock.close()
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()


def test_records_reach_syslog_under_the_services_ident(syslog_socket):
    path, sock = syslog_socket
    setup("Backup-Rsnapshot", LevelFlags(debug=False, info=True), to_stdout=False,
          secrets=["s3cret"], syslog_socket=str(path))
    log = logging.getLogger("provisioning.test")
    log.debug("not wanted")
    log.info("uid=1,ou=x: bind with s3cret")
    datagram = sock.recv(4096).decode()
    # <facility local0 (16) * 8 + info (6)>, as the original daemon, then the ident with the pid
    assert datagram.startswith(f"<134>Backup-Rsnapshot[{os.getpid()}]: INFO uid=1,ou=x: bind with ********")
    sock.setblocking(False)
    with pytest.raises(BlockingIOError):
        sock.recv(4096)                           # the debug record never left


def test_with_log_err_off_errors_are_dropped_too(syslog_socket):
    path, sock = syslog_socket
    setup("Backup-Rsnapshot", LevelFlags(debug=True, info=True, warning=True, error=False), to_stdout=False,
          syslog_socket=str(path))
    logging.getLogger("x").error("dropped")
    logging.getLogger("x").warning("kept")
    assert "WARNING kept" in sock.recv(4096).decode()

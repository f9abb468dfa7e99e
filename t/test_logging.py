"""Logging: the ident and level gates on a real syslog socket, and one record, one line.

The attack: directory values and command output carry newlines, carriage
returns, ESC sequences and other control characters. Through the real daemon
(real slapd, the real plugin) none of them may start a line of their own or
reach the log raw.
"""
from __future__ import annotations

import codecs
import logging
import os
import re
import socket
import unicodedata

import ldap.dn
import ldap.modlist
import pytest

from provisioning.base.codes import ReturnValue
from provisioning.base.log import LevelFlags, OneLineFormatter, escape
from provisioning.base.log import setup as log_setup

from helpers import DaemonProcess, account_attrs, wait_until

UNSAFE = {"Cc", "Cf", "Cs", "Zl", "Zp"}


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


def _datagram(sock) -> str:
    text = sock.recv(65536).decode()
    assert text.endswith("\x00")               # SysLogHandler's terminator, the only NUL allowed
    return text[:-1]


# ------------------------------------------------------------------ syslog

def test_records_reach_syslog_under_the_services_ident(syslog_socket):
    path, sock = syslog_socket
    log_setup("Backup-Rsnapshot", LevelFlags(debug=False, info=True), to_stdout=False, syslog_socket=str(path))
    log = logging.getLogger("provisioning.test")
    log.debug("not wanted")
    log.info("uid=1,ou=x: done")
    # <facility local0 (16) * 8 + info (6)>, as the original daemon, then the ident with the pid
    assert _datagram(sock) == f"<134>Backup-Rsnapshot[{os.getpid()}]: INFO uid=1,ou=x: done"
    sock.setblocking(False)
    with pytest.raises(BlockingIOError):
        sock.recv(4096)                           # the debug record never left


def test_with_log_err_off_errors_are_dropped_too(syslog_socket):
    path, sock = syslog_socket
    log_setup("Backup-Rsnapshot", LevelFlags(debug=True, info=True, warning=True, error=False), to_stdout=False,
              syslog_socket=str(path))
    logging.getLogger("x").error("dropped")
    logging.getLogger("x").warning("kept")
    assert "WARNING kept" in sock.recv(4096).decode()


def test_syslog_gets_directory_values_escaped_and_tracebacks_on_the_same_line(syslog_socket):
    path, sock = syslog_socket
    log_setup("Backup-Rsnapshot", LevelFlags(), to_stdout=False, syslog_socket=str(path))
    log = logging.getLogger("provisioning.test")
    log.error("%s: refused", "uid=1\n<134>Backup-Rsnapshot[1]: INFO forged\x1b[2J")
    assert _datagram(sock) == (f"<131>Backup-Rsnapshot[{os.getpid()}]: ERROR "
                               f"uid=1\\n<134>Backup-Rsnapshot[1]: INFO forged\\x1b[2J: refused")
    try:
        raise ValueError("cn=x\nFORGED line\r\x1b]0;title\x07")
    except ValueError:
        log.exception("%s: plugin raised", "uid=2")
    record = _datagram(sock)
    assert record.startswith(f"<131>Backup-Rsnapshot[{os.getpid()}]: ERROR uid=2: plugin raised\\nTraceback")
    assert "ValueError: cn=x\\nFORGED line\\r\\x1b]0;title\\x07" in record
    assert not any(unicodedata.category(c) in UNSAFE for c in record)


# ---------------------------------------------------------- stdout / stderr

@pytest.mark.parametrize("to_stdout", [True, False])
def test_every_handler_setup_installs_writes_one_line_per_record(tmp_path, capsys, restore_logging, to_stdout,
                                                                 monkeypatch):
    monkeypatch.setattr("provisioning.base.log._said_no_syslog", False)     # said once per process
    log_setup("Backup-Rsnapshot", LevelFlags(debug=True), to_stdout=to_stdout,
              syslog_socket=str(tmp_path / "no-such-socket"))
    handlers = logging.getLogger().handlers
    assert handlers and all(isinstance(h.formatter, OneLineFormatter) for h in handlers)
    log = logging.getLogger("provisioning.test")
    log.info("value %s", "a\nFORGED\r\x1b[31mred\u2028b")
    try:
        raise RuntimeError("bind failed\nFORGED")
    except RuntimeError:
        log.exception("trouble")
    log.warning("with the stack", stack_info=True)
    captured = capsys.readouterr()
    lines = (captured.out if to_stdout else captured.err).splitlines()
    assert "syslog socket" in lines[0]            # the fallback warning
    assert len(lines) == 4, lines
    prefix = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR) ")
    assert all(prefix.match(line) for line in lines), lines
    assert lines[1].endswith("INFO value a\\nFORGED\\r\\x1b[31mred\\u2028b")
    assert "ERROR trouble\\nTraceback (most recent call last):\\n  File " in lines[2]
    assert lines[2].endswith("RuntimeError: bind failed\\nFORGED")
    assert "WARNING with the stack\\nStack (most recent call last):" in lines[3]


# ------------------------------------------------------------------ escape

def test_escape_leaves_printable_text_alone():
    text = "uid=3723707,ou=accounts: Zürich, 東京, €5, tab-free [ok] ~"
    assert escape(text) == text


@pytest.mark.parametrize("char, shown", [
    ("\n", "\\n"), ("\r", "\\r"), ("\t", "\\t"), ("\\", "\\\\"), ("\x00", "\\x00"), ("\x1b", "\\x1b"),
    ("\x07", "\\x07"), ("\x7f", "\\x7f"), ("\x85", "\\x85"), ("\x9b", "\\x9b"), ("\u2028", "\\u2028"),
    ("\u2029", "\\u2029"), ("\u202e", "\\u202e"), ("\ufeff", "\\ufeff"), ("\udcff", "\\udcff"),
    ("\U000e0041", "\\U000e0041"),
])
def test_escape_shows_control_and_invisible_characters(char, shown):
    assert escape(f"a{char}b") == f"a{shown}b"


def test_a_backslash_in_data_stays_unambiguous():
    assert escape("a\\nb") != escape("a\nb")
    assert escape("cn=a\\,b") == "cn=a\\\\,b"


def test_escaped_text_has_no_unsafe_character_and_decodes_back_to_the_original():
    every = "".join(map(chr, range(0x110000)))
    shown = escape(every)
    assert not [c for c in shown if unicodedata.category(c) in UNSAFE]
    # Python's own unicode_escape reads it back exactly: nothing was lost or made ambiguous.
    assert codecs.decode(shown.encode("ascii", "backslashreplace"), "unicode_escape") == every


# ---------------------------------------------------- through the daemon

PAYLOAD = ("\nFORGED 2030-01-01 00:00:00,000 INFO a genuine-looking line\r\x1b[2J\x1b]0;owned\x07"
           "\x08\x0b\x0c\x7f\x85\x9b\u2028\u2029\u202e")
# The raw characters of PAYLOAD that must never reach the log (newlines: see the line check).
RAW = ["\r", "\x1b", "\x07", "\x08", "\x0b", "\x0c", "\x7f", "\x85", "\x9b", "\u2028", "\u2029", "\u202e"]
STDERR_SCRIPT = r"""#!/bin/sh
printf 'setquota: first line\nFORGED from stderr\r\033[2J\033]0;owned\007\010\177\302\233\342\200\256 end\n' >&2
exit 1
"""
LINE = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR|CRITICAL) \S")


def test_directory_values_and_command_output_cannot_forge_log_lines(host, directory):
    host.layout.setquota.write_text(STDERR_SCRIPT)
    daemon = DaemonProcess(host).start()
    try:
        # A: a good account whose setquota fails with hostile stderr.
        quota_dn = directory.add("3723707")
        # B: uid, DN and cn carry the payload (slapd takes them in directoryString).
        hostile_uid = "3723708" + PAYLOAD
        hostile_dn = f"uid={ldap.dn.escape_dn_chars(hostile_uid)},{directory.subtree}"
        attrs = account_attrs("3723708", directory.backup_root, cn="Givenname" + PAYLOAD)
        attrs["uid"] = [hostile_uid.encode()]
        directory.conn.add_s(hostile_dn, ldap.modlist.addModlist(attrs))
        # C: the request itself (sstProvisioningMode) carries it, and is refused with its value.
        mode_dn = directory.add("3723709", sstProvisioningMode="add" + PAYLOAD)

        directory.wait_return_value(quota_dn, 6)
        # Refused by the plugin (which code does not matter here, only that it was handled and logged).
        refused = wait_until(lambda: (directory.get(hostile_dn) or {}).get("sstProvisioningReturnValue"),
                             "a return value on the hostile entry")
        assert refused != "0"
        directory.wait_return_value(mode_dn, ReturnValue.UNKNOWN_MODE)
        daemon.wait_for(r"uid=3723709,.*unknown sstProvisioningMode")
    finally:
        assert daemon.stop() == 0
    text = daemon.log_path.read_bytes().decode("utf-8")
    assert [char for char in RAW if char in text] == []
    lines = text.split("\n")            # the only line breaks left: one after each record
    assert lines.pop() == ""                                   # the file ends with a newline
    strangers = [line for line in lines if not LINE.match(line)]
    assert strangers == [], strangers[:5]
    # The values were logged (escaped), so the checks above did look at them.
    dn_shown = "uid=3723708" + escape("\nFORGED 2030-01-01 00:00:00")
    assert sum(dn_shown in line for line in lines) >= 3         # requested, claimed, refused: each names B
    assert any(f'unknown sstProvisioningMode "{escape("add" + PAYLOAD)}"' in line for line in lines)
    assert any("setting the quota failed" in line and "\\x1b[2J\\x1b]0;owned\\x07\\x08\\x7f\\x9b\\u202e end" in line
               for line in lines)


def test_dry_run_output_cannot_be_forged_either(host, directory):
    hostile_uid = "3723708" + PAYLOAD
    hostile_dn = f"uid={ldap.dn.escape_dn_chars(hostile_uid)},{directory.subtree}"
    attrs = account_attrs("3723708", directory.backup_root)
    attrs["uid"] = [hostile_uid.encode()]
    directory.conn.add_s(hostile_dn, ldap.modlist.addModlist(attrs))
    daemon = DaemonProcess(host, "--dry-run").start()
    try:
        daemon.wait_for(r"^DRY-RUN: would modify uid=3723708\\nFORGED .*: sstProvisioningMode=adding")
    finally:
        assert daemon.stop() == 0
    text = daemon.log_path.read_bytes().decode("utf-8")
    assert [char for char in RAW if char in text] == []
    lines = text.split("\n")[:-1]
    strangers = [line for line in lines if not (LINE.match(line) or line.startswith("DRY-RUN: would "))]
    assert strangers == [], strangers[:5]

"""The configuration files' format: the original's (Config::IniFiles), without inline comments.

The attack on the old reader: ``ADMIN_PASSWORD = abc#def`` was read as
``abc`` (configobj's inline comment) and the bind failed as "Invalid
credentials". Every value may hold ``#`` and ``;``; only whole lines are
comments.
"""
from __future__ import annotations

import subprocess
import sys

import ldap.modlist
import pytest

from provisioning.config import loader as cfgmod
from provisioning.base.secret import Secret

SERVICE = """[Database]
BACKEND = LDAP
SERVER = ldap://ldap.example.org
ADMIN_USER = cn=Manager,dc=x,dc=y
ADMIN_PASSWORD = {password}
SERVICE_SUBTREE = ou=backup,dc=x,dc=y
COOKIE_FILE = /var/lib/provisioning/test.cookie

[Service]
MODUS = selfcare
TRANSPORTAPI = LocalCLI
SERVICE = Backup
TYPE = Rsnapshot
{extra}"""


def service(tmp_path, password="s3cret", extra="", *, newline="\n"):
    path = tmp_path / "Service.conf"
    path.write_bytes(SERVICE.format(password=password, extra=extra).replace("\n", newline).encode())
    return path


def global_conf(tmp_path, text):
    path = tmp_path / "Global.conf"
    path.write_text(text)
    return path


def problems_of(path, global_path=None):
    with pytest.raises(cfgmod.ConfigError) as err:
        cfgmod.load(path, global_path)
    return err.value.problems


@pytest.mark.parametrize("password", ["abc#def", "abcdef#", "#abc", "abc # def", "abc;def", "abc ;def;",
                                      'a"b\'c', "a%(b)s$c", "a=b", "a,b", "x\x85y"])
def test_the_password_is_read_whole_in_the_service_configuration(tmp_path, password):
    conf = cfgmod.load(service(tmp_path, password), None)
    secret = conf.service["Database"]["ADMIN_PASSWORD"]
    assert isinstance(secret, Secret) and secret.reveal() == password


@pytest.mark.parametrize("value", ["p#w", "pw#", "p;w", "#"])
def test_values_with_hash_are_read_whole_in_global_conf(tmp_path, value):
    glob = global_conf(tmp_path, f"[Mail]\nPASSWORD = {value}\nFROMNAME = Backup #1 {value}\n")
    conf = cfgmod.load(service(tmp_path), glob)
    assert conf.global_["Mail"]["PASSWORD"].reveal() == value
    assert conf.global_["Mail"]["FROMNAME"] == f"Backup #1 {value}"


def test_whole_line_comments_are_still_comments_in_both_files(tmp_path):
    extra = """
# ADMIN_PASSWORD = commented-out
   # an indented comment
; a semicolon comment
  ;COMMAND_TIMEOUT = 5
[ Gateway ]
HOST   =   gw.example.org   
"""
    glob = global_conf(tmp_path, "# [Global]\n;LOG_DEBUG = 1\n[Global]\n  # LOG_INFO = 0\nLOG_INFO = 1\n"
                                 "[Operation Mode]\n# SLEEP = 99\nSLEEP = 5\n")
    conf = cfgmod.load(service(tmp_path, extra=extra), glob)
    assert conf.service["Database"]["ADMIN_PASSWORD"].reveal() == "s3cret"
    assert conf.service["Service"]["COMMAND_TIMEOUT"] == 600
    assert conf.service["Gateway"]["HOST"] == "gw.example.org"      # blanks around the value dropped
    assert conf.global_["Global"]["LOG_DEBUG"] is False and conf.global_["Global"]["LOG_INFO"] is True
    assert conf.global_["Operation Mode"]["SLEEP"] == 5
    assert cfgmod.unknown_keys(conf) == []


def test_crlf_files_and_a_bom_read_like_plain_lf_files(tmp_path):
    path = service(tmp_path, "abc#def", newline="\r\n")
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    conf = cfgmod.load(path, None)
    assert conf.service["Database"]["ADMIN_PASSWORD"].reveal() == "abc#def"
    assert conf.service["Service"]["TYPE"] == "Rsnapshot"


def test_a_comment_meant_inline_is_refused_with_a_hint(tmp_path):
    glob = global_conf(tmp_path, "[Global]\nSLEEP = 10   # seconds\n[Mail]\nSSL = ssl ; port 465\n")
    problems = problems_of(service(tmp_path), glob)
    assert [p.split(": ")[1] for p in problems] == ["[Global] SLEEP", "[Mail] SSL"]
    assert all(p.endswith("; note: # and ; inside a value are part of it, comments are lines of their own")
               for p in problems), problems


def test_a_malformed_line_is_named_but_never_shown(tmp_path):
    path = service(tmp_path, extra="ADMIN_PASSWORD: hunter2\n")
    problems = problems_of(path)
    line = path.read_text().splitlines().index("ADMIN_PASSWORD: hunter2") + 1
    assert problems == [f"{path}: line {line}: neither a comment, a [section] nor KEY = VALUE "
                        f"(the line is not shown: it may hold a password)"]


def test_keys_outside_sections_and_duplicates_are_errors(tmp_path):
    path = tmp_path / "dup.conf"
    path.write_text("ORPHAN = 1\n[Service]\nTYPE = A\nTYPE = B\n[Database]\n[Service]\n")
    assert problems_of(path) == [f"{path}: line 1: key ORPHAN is outside any [section]",
                                 f"{path}: line 4: [Service] TYPE given again (first at line 3)",
                                 f"{path}: line 6: section [Service] given again (first at line 2)"]


def test_a_file_that_is_not_utf8_is_named(tmp_path):
    path = tmp_path / "latin1.conf"
    path.write_bytes(SERVICE.format(password="gr\xfcn", extra="").encode("latin-1"))
    assert problems_of(path) == [f"{path}: line 5: not UTF-8 text"]


def test_a_password_with_hash_binds_through_the_daemon(tmp_path, host, slapd, subtree):
    """The issue's failure, end to end: a user whose password holds # passes --check."""
    password = "abc#def;ghi #jkl#"
    user = f"cn=provisioning,{subtree}"
    conn = slapd.connect()
    conn.add_s(user, ldap.modlist.addModlist({"objectClass": [b"person"], "cn": [b"provisioning"],
                                              "sn": [b"daemon"], "userPassword": [password.encode()]}))
    conn.unbind_s()
    host.set("Database", ADMIN_USER=user, ADMIN_PASSWORD=password)
    command = [sys.executable, "-m", "provisioning", "-c", str(host.config), "-g", str(host.global_config), "-t"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"accepts {user}" in result.stdout
    host.set("Database", ADMIN_PASSWORD=password.split("#")[0])   # what the old reader made of it
    result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert result.returncode == 3 and "Invalid credentials" in result.stdout + result.stderr

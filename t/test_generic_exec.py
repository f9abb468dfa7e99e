"""Generic/Exec through the daemon against slapd: selfcare and LDAP mode, exit codes, hostile entries.

The commands are small stand-ins that record what they got (argv, whole
environment, stdin) as one JSON line each, and exit as the entry's
``description`` tells them. The tests use the pytest plugin's fixtures
(provisioning_daemon, provisioning_entries), as a plugin author's would.
"""
from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import ldap.dn
import pytest

from provisioning.transport.commandguard import COMMAND_VARIABLE, VARIABLE as GUARD_VARIABLE

from provisioning.backend.store import Store
from provisioning.base.entry import Entry
from provisioning.testing import DaemonProcess, assert_done
from provisioning.transport import CLISSH, DryRun, LocalCLI
from provisioning.transport.nofollow import OUTPUT_KEPT
from provisioning_generic_exec.codes import Code, return_value
from provisioning_generic_exec.request import dn_for_environment, environment, stdin_json

# What a command whose description ends in " loud" writes to stderr first: more than is kept.
LOUD = 200_000
RECORDER = """#!/usr/bin/python3 -I
# Generic/Exec stand-in: records argv, environment and stdin, then does what the entry's description says.
import json, os, signal, sys, time
got = {"argv": sys.argv, "env": dict(os.environ), "stdin": sys.stdin.read()}
with open(%(log)r, "a") as log:
    log.write(json.dumps(got) + "\\n")
request = json.loads(got["stdin"])
say = (request["attributes"].get("description") or ["exit 0"])[0]
if say.endswith(" loud"):
    sys.stderr.write("x" * %(loud)d + "\\n")
sys.stderr.write("a first line\\n%%s: done with %%s\\n" %% (os.environ["PROVISIONING_VERB"], say))
if say == "kill":
    os.kill(os.getpid(), signal.SIGKILL)
if say == "sleep":
    time.sleep(30)
sys.exit(int(say.split()[1]))
"""


def _recorder(folder: Path, name: str) -> tuple[Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    command, log = folder / name, folder / f"{name}.calls"
    command.write_text(RECORDER % {"log": str(log), "loud": LOUD})
    command.chmod(0o755)
    return command, log


def _calls(log: Path) -> list[dict]:
    """The recorded calls; the command guard's token (in a local command's environment) and the
    command's own marker (in every command's) taken out."""
    calls = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    for call in calls:
        token = call["env"].pop(GUARD_VARIABLE, None)
        assert token is None or token.count("-") == 1
        assert call["env"].pop(COMMAND_VARIABLE).count("-") == 2
    return calls


@pytest.fixture
def commands(tmp_path) -> dict[str, tuple[Path, Path]]:
    """One recorder per request type: (command, its calls file)."""
    return {verb: _recorder(tmp_path / "commands", f"{verb}-cmd") for verb in ("add", "modify", "delete")}


def _sections(commands, **exec_keys) -> dict:
    keys = {f"{verb.upper()}_CMD": str(command) for verb, (command, _) in commands.items()}
    keys.update(exec_keys)
    return {"Exec": {k: v for k, v in keys.items() if v is not None}}


# ---------------------------------------------------------------- selfcare

def test_selfcare_add_modify_delete_run_their_commands_with_the_request(
        provisioning_daemon, provisioning_entries, commands):
    daemon = provisioning_daemon("Generic/Exec", _sections(commands))
    dn = provisioning_entries.add("alice", description="exit 0")
    assert_done(provisioning_entries.wait_mode(dn, "added"), "added")
    provisioning_entries.request(dn, "modify", l="Bern")
    assert_done(provisioning_entries.wait_mode(dn, "modified"), "modified")
    provisioning_entries.request(dn, "delete", sstIsActive="FALSE")
    assert_done(provisioning_entries.wait_mode(dn, "deleted"), "deleted")

    for verb, (command, log) in commands.items():
        [call] = _calls(log)
        assert call["argv"] == [str(command)]          # nothing from the entry on the command line
        assert call["env"] == {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                               "LANG": "C.UTF-8", "PROVISIONING_VERB": verb, "PROVISIONING_DN": dn}
        assert call["stdin"].endswith("\n") and call["stdin"].count("\n") == 1
        request = json.loads(call["stdin"])
        assert set(request) == {"verb", "dn", "attributes"}
        assert (request["verb"], request["dn"]) == (verb, dn)
        assert request["attributes"]["uid"] == ["alice"]
    modified = json.loads(_calls(commands["modify"][1])[0]["stdin"])["attributes"]
    assert modified["l"] == ["Bern"] and modified["sstProvisioningMode"] == ["modifying"]
    assert json.loads(_calls(commands["delete"][1])[0]["stdin"])["attributes"]["sstIsActive"] == ["FALSE"]
    # The command's last stderr line is in the log, with the DN first.
    daemon.wait_for(rf"INFO {dn}: add: ADD_CMD {commands['add'][0]} exited 0 in .* s; it said: "
                    r"add: done with exit 0$")


@pytest.mark.parametrize(("description", "value"), [
    ("exit 7", 7),                                  # passed on as it is
    ("exit 89", 89),
    ("exit 90", Code.EXIT_CODE_OUT_OF_RANGE),       # the plugin's own codes are not the command's
    ("exit 101", Code.EXIT_CODE_OUT_OF_RANGE),      # nor are the core's refusals
    ("exit 255", Code.EXIT_CODE_OUT_OF_RANGE),
    ("exit 124", Code.COMMAND_TIMED_OUT),
    ("exit 127", Code.COMMAND_NOT_RUNNABLE),
    ("kill", Code.COMMAND_KILLED),
])
def test_the_exit_code_is_the_return_value_within_the_plugins_range(
        provisioning_daemon, provisioning_entries, commands, description, value):
    daemon = provisioning_daemon("Generic/Exec", _sections(commands))
    dn = provisioning_entries.add("bob", description=description)
    entry = provisioning_entries.wait_return_value(dn, int(value))
    assert entry["sstProvisioningMode"] == "adding" and entry["sstProvisioningState"] == "0"
    shown = "-9" if description == "kill" else description.split()[1]
    daemon.wait_for(rf"ERROR {dn}: add: ADD_CMD \S+ exited {shown} in ")
    daemon.wait_for(rf"{dn}: add failed with return value {int(value)}")


def test_the_log_quotes_the_end_of_a_long_stderr_and_says_how_much_came_before(
        provisioning_daemon, provisioning_entries, commands):
    daemon = provisioning_daemon("Generic/Exec", _sections(commands))
    dn = provisioning_entries.add("loud", description="exit 5 loud")
    provisioning_entries.wait_return_value(dn, 5)
    said = "add: done with exit 5 loud"
    dropped = LOUD + 1 + len("a first line\n") + len(said) + 1 - OUTPUT_KEPT
    daemon.wait_for(rf"ERROR {dn}: add: ADD_CMD \S+ exited 5 in .* s; it said: {said} "
                    rf"\({dropped} earlier bytes of stderr dropped\)$")


def test_a_command_running_past_timeout_is_killed_and_the_daemon_goes_on(
        provisioning_daemon, provisioning_entries, commands):
    daemon = provisioning_daemon("Generic/Exec", _sections(commands, TIMEOUT="1"))
    slow = provisioning_entries.add("slow", description="sleep")
    quick = provisioning_entries.add("quick", description="exit 0")
    assert provisioning_entries.wait_return_value(slow, Code.COMMAND_TIMED_OUT)["sstProvisioningMode"] == "adding"
    assert_done(provisioning_entries.wait_mode(quick, "added"), "added")
    daemon.wait_for(rf"ERROR {slow}: add: ADD_CMD \S+ exited 124 .*\(return value 92, COMMAND_TIMED_OUT\); "
                    r"it said: killed after 1 s")


def test_a_request_type_without_command_is_refused_and_nothing_runs(
        provisioning_daemon, provisioning_entries, commands, provisioning_service):
    files = provisioning_service("Generic/Exec", _sections(commands, MODIFY_CMD=None))
    daemon = provisioning_daemon(files)
    dn = provisioning_entries.add("carol")
    provisioning_entries.wait_mode(dn, "added")
    provisioning_entries.request(dn, "modify")
    assert provisioning_entries.wait_return_value(dn, Code.NO_COMMAND)["sstProvisioningMode"] == "modifying"
    daemon.wait_for(rf"ERROR {dn}: modify refused: \[Exec\] MODIFY_CMD is not set \(return value 90, NO_COMMAND\)")
    assert _calls(commands["modify"][1]) == []
    # status names the plugin's value for people
    shown = subprocess.run([sys.executable, "-m", "provisioning", "status", "-c", str(files.config),
                            "-g", str(files.global_config)], capture_output=True, text=True, timeout=60)
    assert f"{dn}: modifying, return value 90 (NO_COMMAND: [Exec] has no command" in shown.stdout, shown.stdout


# ---------------------------------------------------------------- what the command gets, and nothing else

HASH = "{SSHA}c2VjcmV0LWhhc2gtb2YtdGhlLXBhc3N3b3Jk"


@pytest.mark.parametrize("attributes, given, withheld", [
    (None, {"uid", "description", "objectClass"}, {"userPassword", "seeAlso"}),          # the default
    ("uid, seeAlso", {"uid", "seeAlso"}, {"userPassword", "description"}),
], ids=["default", "declared"])
def test_the_command_and_the_store_get_only_the_attributes_declared(
        provisioning_daemon, provisioning_entries, commands, attributes, given, withheld):
    """Issue 18: stdin and the store carried every attribute the bind DN can read, password hashes included."""
    daemon = provisioning_daemon("Generic/Exec", _sections(commands, ATTRIBUTES=attributes))
    dn = provisioning_entries.add("grace", description="exit 0", seeAlso="cn=elsewhere", userPassword=HASH,
                                  objectClass=["account", "sstProvisioning", "sstRelationship",
                                               "simpleSecurityObject"])
    assert_done(provisioning_entries.wait_mode(dn, "added"), "added")
    [call] = _calls(commands["add"][1])
    sent = json.loads(call["stdin"])["attributes"]
    core = {"sstProvisioningMode", "sstProvisioningState", "sstProvisioningExecutionDate", "sstIsActive",
            "sstProvisioningExecutionTime", "entryUUID", "entryCSN", "modifyTimestamp"}
    assert given | core <= set(sent) and not withheld & set(sent), sorted(sent)
    assert HASH not in call["stdin"]
    assert daemon.stop() == 0
    store = Store(Path(f"{daemon.files.service['Database']['COOKIE_FILE']}.sqlite"))
    store.open()
    kept = store.lookup(provisioning_entries.entry_uuid(dn))
    assert kept is not None and not withheld & set(kept.values) and HASH not in json.dumps(kept.values)


def test_attributes_that_are_no_attribute_names_stop_the_start(provisioning_service, commands):
    files = provisioning_service("Generic/Exec", _sections(commands, ATTRIBUTES="uid, (cn=*), mail"))
    result = subprocess.run([sys.executable, "-m", "provisioning", "-c", str(files.config), "-g",
                             str(files.global_config)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 3 and "[Exec] ATTRIBUTES: '(cn=*)' is not an attribute name" in result.stderr


def test_the_command_environment_is_exactly_what_the_docs_list(provisioning_daemon, provisioning_entries,
                                                                commands):
    """Issue 18: the README (now docs/generic-exec.md) said "exactly" four variables; a local command got a fifth."""
    text = (Path(__file__).resolve().parents[1] / "docs/generic-exec.md").read_text()
    bullet = text.split("- **environment**: ", 1)[1].split("\n- **", 1)[0]
    listed = set(re.findall(r"`([A-Z_]+)(?:=[^`]*)?`", bullet))
    provisioning_daemon("Generic/Exec", _sections(commands))
    dn = provisioning_entries.add("heidi", description="exit 0")
    assert_done(provisioning_entries.wait_mode(dn, "added"), "added")
    [line] = commands["add"][1].read_text().splitlines()
    assert set(json.loads(line)["env"]) == listed, bullet


# ---------------------------------------------------------------- hostile entries

def test_a_dn_and_values_with_newlines_reach_the_command_as_data_only(
        provisioning_daemon, provisioning_entries, commands, provisioning_slapd):
    uid = "evil\nINFO forged\x1b[2J\u2028x"
    daemon = provisioning_daemon("Generic/Exec", _sections(commands))
    dn = provisioning_entries.add(uid, description="exit 0", l="line one\nPROVISIONING_VERB=delete")
    assert_done(provisioning_entries.wait_mode(dn, "added"), "added")
    [call] = _calls(commands["add"][1])
    assert call["argv"] == [str(commands["add"][0])]
    assert set(call["env"]) == {"PATH", "LANG", "PROVISIONING_VERB", "PROVISIONING_DN"}
    assert call["env"]["PROVISIONING_VERB"] == "add"
    shown = call["env"]["PROVISIONING_DN"]
    # One line of printable text that names the very same entry.
    assert shown.isprintable() and "\n" not in shown and "\x1b" not in shown
    assert ldap.dn.str2dn(shown) == ldap.dn.str2dn(dn)
    assert provisioning_slapd.connect().search_s(shown, ldap.SCOPE_BASE, attrlist=["uid"])[0][1]["uid"] == \
        [uid.encode()]
    # stdin: exact values on one line.
    assert call["stdin"].count("\n") == 1
    request = json.loads(call["stdin"])
    assert request["dn"] == dn and request["attributes"]["uid"] == [uid]
    assert request["attributes"]["l"] == ["line one\nPROVISIONING_VERB=delete"]
    # And the log shows nothing as a line of its own.
    assert not [line for line in daemon.text().splitlines() if line.startswith(("INFO forged", "x", "PROVISIONING"))]


def test_dn_for_environment_escapes_exactly_the_unsafe_characters():
    assert dn_for_environment("uid=plain,ou=x") == "uid=plain,ou=x"
    assert dn_for_environment(r"cn=Doe\, John,ou=x") == r"cn=Doe\, John,ou=x"   # escapes stay as they are
    assert dn_for_environment("uid=Zürich,ou=x") == "uid=Zürich,ou=x"
    assert dn_for_environment("uid=a\nb\tc\x7f,ou=x") == r"uid=a\0Ab\09c\7F,ou=x"
    assert dn_for_environment("uid=\u202eevil,ou=x") == r"uid=\E2\80\AEevil,ou=x"      # bidi override
    assert dn_for_environment("uid=\x00,ou=x") == r"uid=\00,ou=x"                       # NUL cannot be in an env
    assert set(environment("add", "uid=a\nb")) == {"PATH", "LANG", "PROVISIONING_VERB", "PROVISIONING_DN"}
    line = stdin_json("add", Entry.from_values("uid=a\nb", {"l": ["x\u2028y\n"]}))
    assert line.isascii() and line.count(b"\n") == 1 and json.loads(line)["attributes"]["l"] == ["x\u2028y\n"]


def test_exit_codes_map_into_the_plugins_range():
    assert [return_value(c) for c in (0, 1, 42, 89)] == [0, 1, 42, 89]
    assert {return_value(c) for c in [90, 99, 100, 102, 125, 128, 137, 200, 255]} == {Code.EXIT_CODE_OUT_OF_RANGE}
    assert return_value(124) == Code.COMMAND_TIMED_OUT
    assert return_value(126) == return_value(127) == Code.COMMAND_NOT_RUNNABLE
    assert return_value(-9) == return_value(-15) == Code.COMMAND_KILLED
    assert all(0 <= return_value(c) <= 99 for c in range(-64, 256))


# ---------------------------------------------------------------- LDAP mode

def test_ldap_mode_runs_add_modify_and_delete_with_the_last_known_entry(
        provisioning_daemon, provisioning_entries, commands):
    daemon = provisioning_daemon("Generic/Exec", _sections(commands), modus="LDAP")
    dn = provisioning_entries.add("dave", selfcare=False, description="exit 0")
    daemon.wait_for(rf"{dn}: add done in .* \(nothing is written back in LDAP mode\)")
    provisioning_entries.modify(dn, l="Chur")
    daemon.wait_for(rf"{dn}: modify done in")
    provisioning_entries.remove(dn)
    daemon.wait_for(rf"{dn}: delete done for the removed entry")
    add, modify, delete = (_calls(commands[verb][1]) for verb in ("add", "modify", "delete"))
    assert len(add) == len(modify) == len(delete) == 1
    removed = json.loads(delete[0]["stdin"])
    assert removed["verb"] == "delete" and removed["dn"] == dn
    assert removed["attributes"]["l"] == ["Chur"]                   # the entry as last seen
    assert delete[0]["env"]["PROVISIONING_DN"] == dn
    assert not any(name.lower().startswith("sstprovisioning") for name in removed["attributes"])


# ---------------------------------------------------------------- dry-run, check, start-up

def test_dry_run_shows_the_command_and_runs_nothing(provisioning_service, provisioning_entries, commands):
    files = provisioning_service("Generic/Exec", _sections(commands))
    dn = provisioning_entries.add("erin")
    dry = DaemonProcess(files.config, files.global_config, files.root, "-r", "--once", log_name="dry.log")
    assert dry.start(wait_ready=False).wait_exit(60) == 0, dry.text()
    assert _calls(commands["add"][1]) == []
    assert provisioning_entries.get(dn)["sstProvisioningMode"] == "add"
    assert (f"DRY-RUN: would run: env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin "
            f"LANG=C.UTF-8 PROVISIONING_VERB=add {shlex.quote('PROVISIONING_DN=' + dn)} {commands['add'][0]}") \
        in dry.text()
    assert f"{dn}: add: ADD_CMD {commands['add'][0]} would be run" in dry.text()


def test_check_has_a_line_per_command(provisioning_service, commands, tmp_path):
    plain = tmp_path / "not-executable"
    plain.write_text("#!/bin/sh\n")
    files = provisioning_service("Generic/Exec", _sections(commands, MODIFY_CMD=str(plain), DELETE_CMD=None))
    result = subprocess.run([sys.executable, "-m", "provisioning", "-c", str(files.config), "-g",
                             str(files.global_config), "-t"], capture_output=True, text=True, timeout=60)
    assert f"OK   Generic/Exec ADD_CMD: {commands['add'][0]} is an executable file" in result.stdout
    assert f"FAIL Generic/Exec MODIFY_CMD: {plain} is not an executable file" in result.stdout
    assert "OK   Generic/Exec DELETE_CMD: not set: delete requests are refused with return value 90" in result.stdout
    assert result.returncode == 3, result.stdout


def test_start_refuses_what_cannot_work_naming_each_key(provisioning_service, tmp_path):
    files = provisioning_service("Generic/Exec", {"Exec": {"ADD_CMD": "relative/cmd", "MODIFY_CMD": str(tmp_path / "gone"),
                                                           "TIMEOUT": "900"}})
    files.set("Service", COMMAND_TIMEOUT="600")
    result = subprocess.run([sys.executable, "-m", "provisioning", "-c", str(files.config), "-g",
                             str(files.global_config)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 3
    assert "[Exec] ADD_CMD: 'relative/cmd' is not an absolute path" in result.stderr
    assert f"[Exec] MODIFY_CMD: {tmp_path / 'gone'} does not exist" in result.stderr
    assert "[Exec] TIMEOUT: 900 s is longer than [Service] COMMAND_TIMEOUT (600 s)" in result.stderr
    files.set("Exec", ADD_CMD=None, MODIFY_CMD=None, TIMEOUT=None)
    result = subprocess.run([sys.executable, "-m", "provisioning", "-c", str(files.config), "-g",
                             str(files.global_config)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 3 and "ADD_CMD, MODIFY_CMD, DELETE_CMD: none is set" in result.stderr


# ---------------------------------------------------------------- CLISSH

def test_the_environment_reaches_a_gateway_command_off_the_command_line(sshd, commands):
    command, log = commands["add"]
    remote = CLISSH(host=sshd["HOST"], user=sshd["USER"], key_file=sshd["DSA_FILE"], port=sshd["PORT"],
                    known_hosts=sshd["KNOWN_HOSTS"], timeout=30)
    env = environment("add", "uid=a\nb,ou=x")
    stdin = b'{"verb": "add", "dn": "x", "attributes": {"description": ["exit 3"]}}\n'
    result = remote.run([str(command)], stdin=stdin, env=env)
    assert result.returncode == 3 and result.argv == [str(command)]
    [call] = _calls(log)
    assert call["env"] == env and call["stdin"] == stdin.decode() and call["argv"] == [str(command)]
    missing = remote.run(["/nonexistent/cmd"], env=env)
    assert missing.returncode == 127 and "No such file" in missing.stderr


def test_generic_exec_over_clissh_through_the_daemon(provisioning_daemon, provisioning_entries, commands, sshd):
    sections = _sections(commands)
    sections["Gateway"] = dict(sshd)
    sections["Service"] = {"TRANSPORTAPI": "CLISSH"}
    provisioning_daemon("Generic/Exec", sections)
    dn = provisioning_entries.add("frank", description="exit 0")
    assert_done(provisioning_entries.wait_mode(dn, "added"), "added")
    [call] = _calls(commands["add"][1])
    assert call["env"]["PROVISIONING_DN"] == dn and json.loads(call["stdin"])["dn"] == dn


def test_local_and_dry_run_transports_take_the_environment(tmp_path, capsys):
    command, log = _recorder(tmp_path, "cmd")
    env = {"LANG": "C.UTF-8", "PROVISIONING_VERB": "add", "X": "1"}
    stdin = b'{"attributes": {"description": ["exit 0"]}}\n'
    assert LocalCLI(timeout=10).run([str(command)], stdin=stdin, env=env).ok
    assert _calls(log)[0]["env"] == env
    assert DryRun(LocalCLI()).run([str(command)], env=env).ok and len(_calls(log)) == 1
    assert f"DRY-RUN: would run: env -i LANG=C.UTF-8 PROVISIONING_VERB=add X=1 {command}" in capsys.readouterr().out

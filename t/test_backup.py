"""Backup/Rsnapshot through the running daemon: every exit code, hostile data, delete."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from provisioning.sandbox.layout import REPO, write_recorder

from faults import PauseAt
from helpers import DaemonProcess, assert_done, home_directory, wait_until

UID = "3723707"


def _nothing_done(host, uid: str = UID) -> None:
    """No command ran and no file was written for the account."""
    assert host.chroot_calls() == [] and host.quota_calls() == []
    assert not any(host.layout.rsnapshot_dir.iterdir())
    assert not host.account_dir(uid).exists()


def _refused(directory, daemon, dn: str, code: int, message: str) -> None:
    entry = directory.wait_return_value(dn, code)
    assert entry["sstProvisioningState"] == "0"
    # The DN as the server spells it (it may escape differently), then the step's message.
    daemon.wait_for(rf"ERROR uid=.*,{re.escape(directory.subtree)}: \w+: .*{message}.* "
                    rf"\(return value {code}, [A-Z_]+\)")


# ------------------------------------------------------------------ add

def test_add_builds_home_quota_and_a_valid_rsnapshot_configuration(host, directory, daemon):
    dn = directory.add(UID)
    assert_done(directory.wait_mode(dn, "added"), "added")
    home = host.home(UID)
    jail = home.parent.parent
    account = host.account_dir(UID)
    assert host.chroot_calls() == [[str(jail), f"/home/{UID}", UID, UID, UID]]
    # Root's everywhere but incoming/; snapshots next to the jail, out of the customer's reach.
    assert _owner_mode(account, jail, home, home / "incoming", account / "snapshots", account / ".entryUUID") == [
        (0, "0o755"), (0, "0o755"), (0, "0o755"), (int(UID), "0o700"), (0, "0o700"), (0, "0o600")]
    assert (account / ".entryUUID").read_text() == f"{directory.entry_uuid(dn)}\n"
    assert host.quota_calls() == [["-u", UID, "1048576", "1048576", "0", "0", "/"]]
    config = host.rsnapshot_config(UID).read_text()
    assert f"snapshot_root\t{account}/snapshots/\n" in config
    assert f"backup\t{home}/incoming/\tincoming/\n" in config
    assert re.findall(r"^retain\t(\w+)\t(\d+)$", config, re.M) == [("daily", "7"), ("weekly", "4"), ("monthly", "3")]
    test = subprocess.run(["rsnapshot", "-c", str(host.rsnapshot_config(UID)), "configtest"],
                          capture_output=True, text=True)
    assert test.returncode == 0 and "Syntax OK" in test.stdout
    assert not list(host.layout.rsnapshot_dir.glob(".*"))      # no candidate left behind


def test_the_daemon_reads_and_keeps_only_what_an_account_is_made_of(host, directory, daemon):
    """The plugin declares its attributes (account.ATTRIBUTES): a password hash or the portal's data
    on the entry is never read, passed to a hook, nor kept in the store."""
    import json
    from provisioning.backend.store import Store
    from provisioning_backup_rsnapshot.account import ATTRIBUTES
    secret = "{SSHA}c2VjcmV0LWhhc2gtb2YtdGhlLXBhc3N3b3Jk"
    dn = directory.add(UID, userPassword=secret, description="portal notes")
    assert_done(directory.wait_mode(dn, "added"), "added")
    assert daemon.stop() == 0
    store = Store(Path(f"{host.layout.cookie}.sqlite"))
    store.open()
    kept = store.lookup(directory.entry_uuid(dn))
    assert kept is not None and set(ATTRIBUTES) - {"host"} <= set(kept.values)
    assert not {"userPassword", "description", "cn", "sstBelongsToCustomerUID"} & set(kept.values)
    assert secret not in json.dumps(kept.values)


def _owner_mode(*paths: Path) -> list[tuple[int, str]]:
    return [(p.lstat().st_uid, oct(p.lstat().st_mode & 0o7777)) for p in paths]


def test_hourly_and_yearly_levels_keep_rsnapshots_order(host, directory, daemon):
    dn = directory.add(UID, sstBackupIntervalHourly="24", sstBackupIntervalYearly="2")
    directory.wait_mode(dn, "added")
    levels = re.findall(r"^retain\t(\w+)\t", host.rsnapshot_config(UID).read_text(), re.M)
    assert levels == ["hourly", "daily", "weekly", "monthly", "yearly"]


def test_quota_is_rounded_up_to_whole_kib_blocks(host, directory, daemon):
    dn = directory.add(UID, sstQuota="1025")
    directory.wait_mode(dn, "added")
    assert host.quota_calls() == [["-u", UID, "2", "2", "0", "0", "/"]]


def test_an_existing_home_is_kept_and_the_script_not_run(host, directory, daemon):
    # An account made before owner markers: its incoming/ belongs to the uidNumber, so add adopts it.
    (host.home(UID) / "incoming").mkdir(parents=True)
    os.chown(host.home(UID) / "incoming", int(UID), int(UID))
    (host.home(UID) / "incoming/precious").write_text("customer data")
    dn = directory.add(UID)
    directory.wait_mode(dn, "added")
    assert host.chroot_calls() == []
    assert (host.home(UID) / "incoming/precious").read_text() == "customer data"
    assert (host.account_dir(UID) / ".entryUUID").read_text() == directory.entry_uuid(dn) + "\n"
    daemon.wait_for(rf"WARNING uid={UID},.*: .*{UID} has no owner marker .* so it is adopted")


def test_modify_twice_gives_the_same_result(host, directory, daemon):
    dn = directory.add(UID)
    directory.wait_mode(dn, "added")
    directory.request(dn, "modify", sstQuota="2147483648", sstBackupIntervalDaily="14")
    directory.wait_mode(dn, "modified")
    first = host.rsnapshot_config(UID).read_text()
    assert "retain\tdaily\t14\n" in first
    directory.request(dn, "modify")
    daemon.wait_for(rf"uid={UID},.*: modify done", count=2)
    assert host.rsnapshot_config(UID).read_text() == first
    assert host.quota_calls()[1:] == [["-u", UID, "2097152", "2097152", "0", "0", "/"]] * 2


def test_modify_recreates_a_lost_home(host, directory, daemon):
    dn = directory.add(UID)
    directory.wait_mode(dn, "added")
    shutil.rmtree(host.account_dir(UID))
    directory.request(dn, "modify")
    assert_done(directory.wait_mode(dn, "modified"), "modified")
    assert (host.home(UID) / "incoming").is_dir()


def test_configtest_runs_once_per_shape_not_per_account(host, directory):
    recorder = host.layout.root / "bin/rsnapshot"
    write_recorder(recorder, host.layout.root / "rsnapshot.calls", then="/usr/bin/rsnapshot")
    host.set("Backup", RSNAPSHOT_CMD=recorder)
    daemon = DaemonProcess(host).start()
    try:
        same = [directory.add(str(3726000 + i)) for i in range(3)]
        other = directory.add("3726100", sstBackupIntervalHourly="6")
        for dn in same + [other]:
            assert_done(directory.wait_mode(dn, "added"), "added")
    finally:
        assert daemon.stop() == 0
    calls = (host.layout.root / "rsnapshot.calls").read_text().splitlines()
    assert len(calls) == 2                                   # one per retain pattern
    for uid in ["3726000", "3726001", "3726002", "3726100"]:  # and every file still passes
        assert subprocess.run(["rsnapshot", "-c", str(host.rsnapshot_config(uid)), "configtest"],
                              capture_output=True).returncode == 0


def test_configtest_always_runs_it_for_every_file(host, directory):
    recorder = host.layout.root / "bin/rsnapshot"
    write_recorder(recorder, host.layout.root / "rsnapshot.calls", then="/usr/bin/rsnapshot")
    host.set("Backup", RSNAPSHOT_CMD=recorder, CONFIGTEST="always")
    daemon = DaemonProcess(host).start()
    try:
        for dn in [directory.add(str(3726000 + i)) for i in range(3)]:
            directory.wait_mode(dn, "added")
    finally:
        assert daemon.stop() == 0
    assert len((host.layout.root / "rsnapshot.calls").read_text().splitlines()) == 3


# ---------------------------------------------------------- exit codes

def test_code_2_account_without_posix_attributes(host, directory, daemon):
    dn = directory.add(UID, objectClass=["account", "shadowAccount", "sstBackup", "sstProvisioning",
                                         "sstRelationship"], uidNumber=None, gidNumber=None, homeDirectory=None,
                     cn=None, loginShell=None)
    _refused(directory, daemon, dn, 2, "the entry has no uidNumber, gidNumber")
    _nothing_done(host)


def test_code_3_a_program_removed_while_running(host, directory):
    rsnapshot = host.layout.root / "bin/rsnapshot"
    shutil.copy("/usr/bin/rsnapshot", rsnapshot)
    host.set("Backup", RSNAPSHOT_CMD=rsnapshot)
    daemon = DaemonProcess(host).start()
    try:
        rsnapshot.unlink()
        dn = directory.add(UID)
        _refused(directory, daemon, dn, 3, f"RSNAPSHOT_CMD {rsnapshot} is not installed")
    finally:
        assert daemon.stop() == 0
    _nothing_done(host)


def test_code_4_a_file_where_the_jail_should_be(host, directory, daemon):
    jail = host.home(UID).parent.parent
    jail.parent.mkdir(parents=True)
    jail.write_text("a file where the jail should be")
    dn = directory.add(UID)
    _refused(directory, daemon, dn, 4, f"{jail} is a regular file .*, not a folder")
    assert host.chroot_calls() == [] and host.quota_calls() == []


def test_code_5_chroot_script_fails(host, directory, daemon):
    Path(f"{host.chroot_log}.exit").write_text("1")
    dn = directory.add(UID)
    _refused(directory, daemon, dn, 5, r"creating the home failed: \S+create-chroot .* exited 1")
    assert len(host.chroot_calls()) == 1
    # setquota ran beside the script: the limit the entry asks for, set again by the retry.
    assert [c[:3] for c in host.quota_calls()] == [["-u", UID, "1048576"]]
    # The configuration written meanwhile is removed, never put in place.
    assert not any(host.layout.rsnapshot_dir.iterdir())


def test_code_5_is_reported_when_the_quota_fails_as_well(host, directory):
    Path(f"{host.chroot_log}.exit").write_text("1")
    host.fail_quota(2)
    daemon = DaemonProcess(host).start()
    try:
        dn = directory.add(UID)
        _refused(directory, daemon, dn, 5, r"creating the home failed")
        daemon.wait_for(rf"WARNING uid={UID},.*: add: setting the quota failed: .* exited 2 as well "
                        r"\(CANNOT_SET_QUOTA\)")
    finally:
        assert daemon.stop() == 0
    assert not any(host.layout.rsnapshot_dir.iterdir())


def test_code_5_chroot_script_succeeds_without_creating_the_home(host, directory, daemon):
    write_recorder(host.chroot_cmd, host.chroot_log)       # records and exits 0, creates nothing
    dn = directory.add(UID)
    _refused(directory, daemon, dn, 5, "exited 0 but .* does not exist")


def test_code_6_quota_fails_and_no_configuration_is_written(host, directory, daemon):
    host.fail_quota(2)
    dn = directory.add(UID)
    _refused(directory, daemon, dn, 6, r"setting the quota failed: \S+setquota -u 3723707 .* exited 2")
    assert not any(host.layout.rsnapshot_dir.iterdir())


def test_code_6_is_reported_when_the_configuration_fails_as_well(host, directory):
    """setquota and the configuration run side by side; the earlier step's failure is the one reported."""
    host.fail_quota(2)
    _bad_template(host)
    daemon = DaemonProcess(host).start()
    try:
        dn = directory.add(UID)
        _refused(directory, daemon, dn, 6, r"setting the quota failed")
    finally:
        assert daemon.stop() == 0
    assert not any(host.layout.rsnapshot_dir.iterdir())


@pytest.mark.parametrize("paused", ["setquota", "create-chroot"])
def test_the_configuration_is_written_beside_the_commands_and_put_in_place_after_them(host, directory, tmp_path,
                                                                                      paused):
    """setquota, the chroot script and the configuration's write run side by side; the file goes in place last."""
    if paused == "setquota":
        pause = PauseAt(tmp_path, paused)
        host.set("Backup", SET_QUOTA_CMD=pause.command)
        quota_calls = pause.call_args
    else:
        pause = PauseAt(tmp_path, paused, then=str(REPO / "bin/prov-backup-create-home"))
        host.set("Backup", CREATE_CHROOT_CMD=pause.command)
        quota_calls = host.quota_calls
    daemon = DaemonProcess(host).start()
    try:
        dn = directory.add(UID)
        pause.wait_paused()
        candidate = host.layout.rsnapshot_dir / f".rsnapshot.conf.{UID}.new"
        wait_until(lambda: quota_calls() and candidate.exists(), f"setquota and the configuration while {paused} runs")
        assert not host.rsnapshot_config(UID).exists()       # not in use before both commands succeeded
        pause.release()
        assert_done(directory.wait_mode(dn, "added"), "added")
    finally:
        assert daemon.stop() == 0
    assert host.rsnapshot_config(UID).exists() and not candidate.exists()
    assert [c[:3] for c in quota_calls()] == [["-u", UID, "1048576"]]


def test_code_7_a_configuration_rsnapshot_rejects_is_never_left_in_place(host, directory):
    _bad_template(host)
    daemon = DaemonProcess(host).start()
    try:
        dn = directory.add(UID)
        _refused(directory, daemon, dn, 7, "rsnapshot configtest rejected the configuration: .*/nonexistent/rsync")
    finally:
        assert daemon.stop() == 0
    assert not any(host.layout.rsnapshot_dir.iterdir())


def _bad_template(host) -> None:
    """A template whose configurations rsnapshot configtest rejects."""
    template = host.layout.root / "bad.template"
    shipped = (REPO / "etc/Provisioning/Backup/rsnapshot.account.template").read_text()
    template.write_text(shipped.replace("/usr/bin/rsync", "/nonexistent/rsync"))
    host.set("Backup", RSNAPSHOT_TEMPLATE=template)


def test_code_8_configuration_cannot_be_removed_after_the_data_was_archived(host, directory, daemon):
    dn = directory.add(UID)
    directory.wait_mode(dn, "added")
    config = host.rsnapshot_config(UID)
    config.unlink()
    config.mkdir()
    (config / "in-the-way").touch()
    directory.request(dn, "delete", sstIsActive="FALSE")
    _refused(directory, daemon, dn, 8, f"cannot remove {config}")
    assert directory.get(dn)["sstProvisioningMode"] == "deleting"
    # Archived first, so the data is safe; the limit stays until the configuration is gone.
    assert not host.account_dir(UID).exists()
    assert len(list((host.layout.backup_root / "archive").iterdir())) == 1
    assert len(host.quota_calls()) == 1
    shutil.rmtree(config)                                    # the operator clears the way ...
    directory.request(dn, "delete")                          # ... and asks again
    assert_done(directory.wait_mode(dn, "deleted"), "deleted")
    assert host.quota_calls()[1:] == [["-u", UID, "0", "0", "0", "0", "/"]]
    daemon.wait_for(rf"uid={UID},.*: delete: .* is already gone, .* removed, quota lifted")


def test_code_9_data_cannot_be_archived_and_a_retry_finishes(host, directory):
    archive = host.layout.root / "archive-is-a-file"
    archive.write_text("")
    host.set("Backup", ARCHIVE_DIR=archive)
    daemon = DaemonProcess(host).start()
    try:
        dn = directory.add(UID)
        directory.wait_mode(dn, "added")
        directory.request(dn, "delete", sstIsActive="FALSE")
        _refused(directory, daemon, dn, 9, f"cannot archive: .*{archive}")
        # Archiving comes first: configuration and limit are as they were.
        assert host.account_dir(UID).is_dir() and host.rsnapshot_config(UID).is_file()
        assert len(host.quota_calls()) == 1
        archive.unlink()                                      # the operator fixes it ...
        directory.request(dn, "delete")                        # ... and asks again
        assert_done(directory.wait_mode(dn, "deleted"), "deleted")
    finally:
        assert daemon.stop() == 0
    assert [p.name.split("-")[0] for p in archive.iterdir()] == [UID]


def test_code_14_home_directory_outside_the_backup_root(host, directory, daemon, tmp_path):
    outside = tmp_path / "elsewhere"
    dn = directory.add(UID, homeDirectory=f"{outside}/{UID}/chroot/./home/{UID}")
    _refused(directory, daemon, dn, 14, f"puts the account directory at {outside}/{UID}; uid {UID}'s place is")
    assert not outside.exists()
    _nothing_done(host)


def test_code_10_account_directory_symlinked_out_of_the_root(host, directory, daemon, tmp_path):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    host.account_dir(UID).parent.mkdir(parents=True)
    host.account_dir(UID).symlink_to(outside)
    dn = directory.add(UID)
    _refused(directory, daemon, dn, 10, f"resolves to {outside}")
    assert not any(outside.iterdir()) and host.quota_calls() == []


@pytest.mark.parametrize("overrides, code, message", [
    ({"uid": "../../etc"}, 11, r"uid '\.\./\.\./etc' is not 1 to 10 digits"),
    ({"uid": "1; rm -rf /"}, 11, r"uid '1; rm -rf /' is not 1 to 10 digits"),
    ({"uid": "1" * 40}, 11, r"uid '1{40}' is not 1 to 10 digits"),
    ({"uidNumber": "0"}, 11, r"uidNumber '0' is not a number from 1000"),
    ({"sstQuota": "-1"}, 11, r"sstQuota '-1' is not a number of bytes"),
    ({"sstQuota": None}, 11, r"sstQuota is missing"),
    ({"sstBackupIntervalDaily": "0", "sstBackupIntervalWeekly": "0", "sstBackupIntervalMonthly": "0"},
     11, r"every sstBackupInterval\* is 0"),
    ({"homeDirectory": "/var/backup/./home/x y"}, 11, r"homeDirectory .* is not <jail>/\./<home>"),
    ({"homeDirectory": "HOME/../../../../etc/x/3723707/chroot/./home/3723707"}, 10, r"contains '\.\.'"),
    ({"homeDirectory": "HOME/7/707/723/3723708/chroot/./home/3723707"}, 14, r"uid 3723707's place is"),
    ({"sstQuota": "0"}, 11, r"sstQuota 0 would mean no limit at all for setquota"),
])
def test_code_10_to_14_hostile_values_touch_nothing(host, directory, daemon, overrides, code, message):
    overrides = {k: (v.replace("HOME", str(host.layout.backup_root)) if isinstance(v, str) else v)
                 for k, v in overrides.items()}
    uid = overrides.pop("uid", UID)
    # Only the value under test is hostile: the rest is a valid account 3723707.
    overrides = {"uidNumber": UID, "gidNumber": UID,
                 "homeDirectory": home_directory(host.layout.backup_root, UID), **overrides}
    dn = directory.add(uid, **overrides)
    _refused(directory, daemon, dn, code, message)
    _nothing_done(host)
    assert list(host.layout.backup_root.iterdir()) == []


# --------------------------------------------------------------- delete

def test_delete_removes_configuration_lifts_quota_and_archives_the_data(host, directory, daemon):
    dn = directory.add(UID)
    directory.wait_mode(dn, "added")
    (host.home(UID) / "incoming/backup.tar").write_text("the customer's data")
    directory.request(dn, "delete", sstIsActive="FALSE")
    assert_done(directory.wait_mode(dn, "deleted"), "deleted")
    assert not host.rsnapshot_config(UID).exists()
    assert host.quota_calls()[-1] == ["-u", UID, "0", "0", "0", "0", "/"]
    assert not host.account_dir(UID).exists()
    archived = list((host.layout.backup_root / "archive").iterdir())
    assert len(archived) == 1 and re.fullmatch(rf"{UID}-\d{{8}}T\d{{6}}Z", archived[0].name)
    saved = archived[0] / f"chroot/home/{UID}/incoming/backup.tar"
    assert saved.read_text() == "the customer's data"
    assert (archived[0] / "snapshots").is_dir()              # the snapshots go with it


def test_delete_removes_a_configuration_candidate_left_over(host, directory, daemon):
    """A candidate whose removal failed (past the deadline, the gateway gone) must not outlive the account."""
    dn = directory.add(UID)
    directory.wait_mode(dn, "added")
    left = host.layout.rsnapshot_dir / f".rsnapshot.conf.{UID}.new"
    left.write_text("a candidate an earlier request could not remove")
    other = host.layout.rsnapshot_dir / ".rsnapshot.conf.3723708.new"
    other.write_text("another account's")
    directory.request(dn, "delete", sstIsActive="FALSE")
    assert_done(directory.wait_mode(dn, "deleted"), "deleted")
    assert not left.exists() and not host.rsnapshot_config(UID).exists()
    assert other.exists()


def test_delete_of_an_account_whose_data_is_already_gone_succeeds(host, directory, daemon):
    dn = directory.add(UID)
    directory.wait_mode(dn, "added")
    shutil.rmtree(host.account_dir(UID))
    directory.request(dn, "delete", sstIsActive="FALSE")
    assert_done(directory.wait_mode(dn, "deleted"), "deleted")
    daemon.wait_for(rf"uid={UID},.*: delete: .* is already gone")


def test_delete_data_keep_leaves_the_data(host, directory):
    host.set("Backup", DELETE_DATA="keep")
    daemon = DaemonProcess(host).start()
    try:
        dn = directory.add(UID)
        directory.wait_mode(dn, "added")
        directory.request(dn, "delete", sstIsActive="FALSE")
        directory.wait_mode(dn, "deleted")
    finally:
        assert daemon.stop() == 0
    assert host.home(UID).is_dir() and not host.rsnapshot_config(UID).exists()


# ------------------------------------------------------ host assignment

def test_an_account_of_another_host_is_left_untouched(host, directory, daemon):
    theirs = directory.add(UID, host="backup-02.example.org")
    ours = directory.add("3723708", host="SANDBOX")          # ENVIRONMENT = sandbox, any case
    directory.wait_mode(ours, "added")
    daemon.wait_for(rf"DEBUG uid={UID},.*: host backup-02.example.org is not this ENVIRONMENT \(sandbox\)")
    entry = directory.get(theirs)
    assert entry["sstProvisioningMode"] == "add" and "sstProvisioningReturnValue" not in entry
    assert [c[1] for c in host.quota_calls()] == ["3723708"]


# ------------------------------------------------------- the full jail

@pytest.mark.skipif(os.geteuid() != 0, reason="builds a chroot: needs root (CI runs as root)")
def test_the_full_chroot_script_through_the_daemon(host, directory):
    write_recorder(host.chroot_cmd, host.chroot_log, then=str(REPO / "bin/prov-backup-create-chroot"))
    daemon = DaemonProcess(host).start()
    try:
        dn = directory.add(UID)
        assert_done(directory.wait_mode(dn, "added"), "added")
    finally:
        assert daemon.stop() == 0
    home = host.home(UID)
    jail = home.parent.parent
    assert _owner_mode(jail, home, home / "incoming", home / ".ssh", home / ".ssh/authorized_keys",
                       host.account_dir(UID) / "snapshots") == [
        (0, "0o755"), (0, "0o755"), (int(UID), "0o700"), (int(UID), "0o700"), (int(UID), "0o600"), (0, "0o700")]
    inside = subprocess.run(["chroot", str(jail), "/bin/sh", "-c", "rsync --version"],
                            capture_output=True, text=True)
    assert inside.returncode == 0 and "rsync" in inside.stdout

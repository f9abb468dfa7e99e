"""Unit tests of the Backup/Rsnapshot plugin's modules (no LDAP, real files under tmp_path)."""
from __future__ import annotations

import base64
import os
import stat
import subprocess
from pathlib import Path

import ldap
import pytest

from provisioning.config.loader import Config
from provisioning.hooks.service import ServiceContext
from provisioning.base.entry import Entry
from provisioning.operator.ldifload import parse_ldif
from provisioning.transport import Interrupted, LocalCLI, within_deadline
from provisioning.transport.base import EXIT_TIMEOUT
from provisioning_backup_rsnapshot import account_ldif
from provisioning_backup_rsnapshot.alongside import alongside
from provisioning_backup_rsnapshot.account import Account, Layout, confine, layout, parse, pattern_directory
from provisioning_backup_rsnapshot.archive import archive_target, dispose
from provisioning_backup_rsnapshot.codes import Code, StepError
from provisioning_backup_rsnapshot import home as homes
from provisioning_backup_rsnapshot.builder import Builder
from provisioning_backup_rsnapshot.ownership import Verdict, judge
from provisioning_backup_rsnapshot.survey import survey
from provisioning_backup_rsnapshot.quota import blocks, quota_argv, set_quota
from provisioning_backup_rsnapshot.rsnapshot import RsnapshotConfigs, Template
from provisioning_backup_rsnapshot.settings import Settings, problems as settings_problems

TEMPLATE = Path(__file__).resolve().parents[1] / "etc/Provisioning/Backup/rsnapshot.account.template"
RSNAPSHOT = "/usr/bin/rsnapshot"
DN = "uid=3723707,ou=accounts,ou=backup,ou=services,dc=stoney-cloud,dc=org"
HOME_DIR = "/var/backup/7/707/723/3723707/chroot/./home/3723707"
STAMP = "20240102T030405Z"

def attrs(**changes: str | None) -> dict[str, list[bytes]]:
    """A complete backup account entry; a value of None drops the attribute."""
    raw = {"uid": "3723707", "uidNumber": "3723707", "gidNumber": "3723707", "sstQuota": "1073741824",
           "sstBackupIntervalHourly": "0", "sstBackupIntervalDaily": "7", "sstBackupIntervalWeekly": "4",
           "sstBackupIntervalMonthly": "3", "sstBackupIntervalYearly": "0"}
    raw.update(changes)
    return {name: [value.encode()] for name, value in raw.items() if value is not None}

def entry(**changes: str | None) -> Entry:
    return Entry.from_ldap(DN, attrs(**changes))

def code_of(call, *args, **kwargs) -> Code:
    with pytest.raises(StepError) as caught:
        call(*args, **kwargs)
    return caught.value.code


# ------------------------------------------------------------------ account.parse

def test_parse_complete_account():
    account = parse(entry(), 1000)
    assert (account.dn, account.uid, account.uid_number, account.gid_number) == (DN, "3723707", 3723707, 3723707)
    assert account.quota_bytes == 1073741824
    assert account.retain == (("daily", 7), ("weekly", 4), ("monthly", 3))
    assert account.home_directory is None
    assert account.owner == (3723707, 3723707)

def test_parse_keeps_levels_order_whatever_the_attribute_order():
    raw = dict(reversed(list(attrs(sstBackupIntervalHourly="2", sstBackupIntervalYearly="1").items())))
    account = parse(Entry.from_ldap(DN, raw), 1000)
    assert [level for level, _ in account.retain] == ["hourly", "daily", "weekly", "monthly", "yearly"]

@pytest.mark.parametrize("name", ["uid", "uidNumber", "gidNumber"])
def test_parse_missing_identity_is_user_not_present(name):
    assert code_of(parse, entry(**{name: None}), 1000) == Code.USER_NOT_PRESENT_IN_BACKEND == 2

@pytest.mark.parametrize("uid", ["../../etc", "1; rm -rf /", "", "1" * 40, "12a4"])
def test_parse_rejects_hostile_uid(uid):
    assert code_of(parse, entry(uid=uid), 1000) == Code.INVALID_ACCOUNT_DATA == 11

@pytest.mark.parametrize("name", ["uidNumber", "gidNumber"])
@pytest.mark.parametrize("value", ["0", "999", "-5", "abc", "4294967295", " 3723707"])
def test_parse_rejects_bad_id_numbers(name, value):
    assert code_of(parse, entry(**{name: value}), 1000) == Code.INVALID_ACCOUNT_DATA

@pytest.mark.parametrize("quota", [None, "-1", "abc", "1.5", "", "0", "00"])
def test_parse_rejects_bad_quota(quota):
    # 0 included: setquota reads a limit of 0 as "no limit at all".
    assert code_of(parse, entry(sstQuota=quota), 1000) == Code.INVALID_ACCOUNT_DATA

def test_parse_accepts_one_byte_quota_and_min_id_itself():
    account = parse(entry(sstQuota="1", uidNumber="1000", gidNumber="1000"), 1000)
    assert account.quota_bytes == 1 and account.owner == (1000, 1000)

@pytest.mark.parametrize("name", ["uid", "uidNumber", "gidNumber", "homeDirectory"])
def test_parse_refuses_a_second_value_of_an_identity_attribute(name):
    raw = attrs(homeDirectory=HOME_DIR)
    raw[name] = raw[name] + [b"3723708"]
    assert code_of(parse, Entry.from_ldap(DN, raw), 1000) == Code.AMBIGUOUS_IDENTITY == 12

@pytest.mark.parametrize("dn", [
    "uid=3723708,ou=accounts,dc=example",          # another uid
    "cn=3723707,ou=accounts,dc=example",           # not a uid RDN
    "uid=3723707+cn=x,ou=accounts,dc=example",     # a multi-valued RDN
    "not a dn",
])
def test_parse_refuses_a_dn_that_does_not_name_the_uid(dn):
    assert code_of(parse, Entry.from_ldap(dn, attrs()), 1000) == Code.AMBIGUOUS_IDENTITY

def test_parse_accepts_uid_rdn_in_any_case():
    assert parse(Entry.from_ldap("UID=3723707,ou=x,dc=example", attrs()), 1000).uid == "3723707"

@pytest.mark.parametrize("value", ["100", "-1", "x", ""])
def test_parse_rejects_bad_interval(value):
    assert code_of(parse, entry(sstBackupIntervalWeekly=value), 1000) == Code.INVALID_ACCOUNT_DATA

def test_parse_accepts_interval_99():
    assert ("weekly", 99) in parse(entry(sstBackupIntervalWeekly="99"), 1000).retain

def test_parse_rejects_all_intervals_zero():
    zeros = {f"sstBackupInterval{n}": "0" for n in ("Hourly", "Daily", "Weekly", "Monthly", "Yearly")}
    assert code_of(parse, entry(**zeros), 1000) == Code.INVALID_ACCOUNT_DATA

@pytest.mark.parametrize("name, value", [("uidNumber", "²"), ("sstQuota", "¹²³"), ("sstBackupIntervalDaily", "²")])
def test_parse_unicode_digits_are_invalid_data_not_a_crash(name, value):
    # str.isdigit() is True for superscripts, but int() cannot read them.
    assert code_of(parse, entry(**{name: value}), 1000) == Code.INVALID_ACCOUNT_DATA

def test_parse_without_service_data_skips_quota_and_intervals():
    account = parse(entry(sstQuota=None, sstBackupIntervalDaily="x", sstBackupIntervalWeekly="0",
                          sstBackupIntervalMonthly="0"), 1000, need_service_data=False)
    assert account.quota_bytes is None and account.retain == ()
    assert account.uid_number == 3723707


# ------------------------------------------------------------------ account.layout

def account_with(home_directory: str | None = None, uid: str = "3723707", **fields) -> Account:
    values = dict(dn=DN, uid=uid, uid_number=3723707, gid_number=3723707, quota_bytes=1073741824,
                  retain=(("daily", 7), ("weekly", 4), ("monthly", 3)), home_directory=home_directory)
    values.update(fields)
    return Account(**values)

def test_pattern_directory():
    assert pattern_directory("3723707", "/var/backup") == "/var/backup/7/707/723/3723707"

def test_layout_from_pattern():
    place = layout(account_with(), "/var/backup")
    assert place.directory == "/var/backup/7/707/723/3723707"
    assert place.jail == "/var/backup/7/707/723/3723707/chroot"
    assert place.home == "/home/3723707"
    assert place.home_path == "/var/backup/7/707/723/3723707/chroot/home/3723707"
    assert place.snapshot_root == "/var/backup/7/707/723/3723707/snapshots/"
    assert place.marker == "/var/backup/7/707/723/3723707/.entryUUID"
    assert place.incoming == place.home_path + "/incoming/"
    assert place.old_snapshot_root == place.home_path + "/.snapshots"
    assert place.chain == ["/var/backup/7/707/723/3723707", "/var/backup/7/707/723/3723707/chroot",
                           "/var/backup/7/707/723/3723707/chroot/home", place.home_path]
    assert place.above("/var/backup") == ["/var/backup", "/var/backup/7", "/var/backup/7/707",
                                          "/var/backup/7/707/723"]

@pytest.mark.parametrize("uid", ["1", "12", "123"])
def test_layout_short_uid_without_home_directory_is_invalid(uid):
    assert code_of(layout, account_with(uid=uid), "/var/backup") == Code.INVALID_ACCOUNT_DATA

def test_layout_from_home_directory_equals_pattern():
    assert layout(account_with(HOME_DIR), "/var/backup") == layout(account_with(), "/var/backup")

@pytest.mark.parametrize("value, uid", [
    ("/srv/b/12/chroot/./home/12", "12"),                                     # short uid: no place
    ("/srv/b/7/707/723/3723707/chroot/./home/3723707", "3723707"),            # another root
])
def test_layout_needs_the_uids_place_in_the_backup_root(value, uid):
    assert code_of(layout, account_with(value, uid=uid), "/var/backup") in (
        Code.INVALID_ACCOUNT_DATA, Code.ACCOUNT_DIRECTORY_MISPLACED)

@pytest.mark.parametrize("value", [
    # inside another customer's incoming/
    "/var/backup/8/708/723/3723708/chroot/home/3723708/incoming/3723707/chroot/./home/3723707",
    # inside another's jail, and around every account of 7/707/723
    "/var/backup/8/708/723/3723708/chroot/3723707/./home/3723707",
    "/var/backup/7/707/3723707/./home/3723707",
])
def test_layout_refuses_an_account_directory_nested_in_or_around_others(value):
    assert code_of(layout, account_with(value), "/var/backup") == Code.ACCOUNT_DIRECTORY_MISPLACED == 14

@pytest.mark.parametrize("home", ["snapshots", "snapshots/x", ".entryUUID"])
def test_layout_keeps_the_home_out_of_roots_folders(home):
    value = f"/var/backup/7/707/723/3723707/./{home}"
    assert code_of(layout, account_with(value), "/var/backup") == Code.INVALID_ACCOUNT_DATA

@pytest.mark.parametrize("value", [
    "/var/backup/7/707/723/3723707/chroot/home/3723707",          # no /./
    "/var/backup/7/707/723/3723707/chroot/./home/./3723707",      # two /./
    "/var/backup/7/707/723/3723707/chroot/./home/37 23707",
    "/var/backup/7/707/723/3723707/chroot/./home/\t3723707",
    "/var/backup/7/707/723/3723707/chroot/./home/3723707\n",
    "/var/backup/7/707/723/3723707/chroot/./home/3723707;id",
    "var/backup/7/707/723/3723707/chroot/./home/3723707",           # relative
])
def test_layout_rejects_malformed_home_directory(value):
    assert code_of(layout, account_with(value), "/var/backup") == Code.INVALID_ACCOUNT_DATA

@pytest.mark.parametrize("value", [
    "/var/backup/../etc/3723707/chroot/./home/3723707",
    "/var/backup/7/707/723/3723707/chroot/./home/../../../../../etc",
    "/var/backup/7/707/723/3723707/chroot/./..",
])
def test_layout_dotdot_is_outside_backup_root(value):
    assert code_of(layout, account_with(value), "/var/backup") == Code.PATH_OUTSIDE_BACKUP_ROOT == 10

@pytest.mark.parametrize("value", ["/var/backup/x/chroot/./home/3723707",
                                   "/var/backup/7/707/723/3723708/chroot/./home/3723707",
                                   "/var/backup/7/707/723/other/./home/3723707"])
def test_layout_account_directory_must_be_named_after_uid(value):
    assert code_of(layout, account_with(value), "/var/backup") == Code.ACCOUNT_DIRECTORY_MISPLACED

def test_layout_jail_not_named_chroot_is_the_account_directory():
    place = layout(account_with("/var/backup/7/707/723/3723707/./home/3723707"), "/var/backup")
    assert place.directory == place.jail == "/var/backup/7/707/723/3723707"
    assert place.home_path == "/var/backup/7/707/723/3723707/home/3723707"
    assert place.chain == [place.directory, place.directory + "/home", place.home_path]


# ------------------------------------------------------------------ account.confine

@pytest.fixture
def root(tmp_path) -> Path:
    (tmp_path / "backup").mkdir()
    return tmp_path / "backup"

def confine_code(place: Layout, root: Path) -> Code | None:
    try:
        confine(place, str(root), str(root / "archive"), LocalCLI())
    except StepError as err:
        return err.code
    return None

def test_confine_accepts_normal_layout_absent_or_present(root):
    place = layout(account_with(), str(root))
    assert confine_code(place, root) is None
    os.makedirs(place.home_path)
    assert confine_code(place, root) is None

def test_confine_rejects_directory_outside_root(root, tmp_path):
    place = layout(account_with(), str(tmp_path / "elsewhere"))
    assert confine_code(place, root) == Code.PATH_OUTSIDE_BACKUP_ROOT

def test_confine_rejects_root_lookalike_prefix(root, tmp_path):
    place = layout(account_with(), str(tmp_path / "backup2"))
    assert confine_code(place, root) == Code.PATH_OUTSIDE_BACKUP_ROOT

def test_confine_rejects_account_directory_symlinked_outside(root, tmp_path):
    place = layout(account_with(), str(root))
    outside = tmp_path / "outside"
    (outside / "chroot/home/3723707").mkdir(parents=True)
    Path(place.directory).parent.mkdir(parents=True)
    os.symlink(outside, place.directory)
    assert confine_code(place, root) == Code.PATH_OUTSIDE_BACKUP_ROOT

def test_confine_rejects_home_symlinked_out_of_jail(root, tmp_path):
    place = layout(account_with(), str(root))
    os.makedirs(Path(place.home_path).parent)
    (tmp_path / "etc").mkdir()
    os.symlink(tmp_path / "etc", place.home_path)
    assert confine_code(place, root) == Code.PATH_OUTSIDE_BACKUP_ROOT

def test_confine_rejects_home_via_symlinked_parent_to_other_account(root):
    place = layout(account_with(), str(root))
    other = layout(account_with(uid="3723708"), str(root))
    os.makedirs(other.home_path)
    os.makedirs(place.jail)
    os.symlink(other.jail + "/home", place.jail + "/home")
    assert confine_code(place, root) == Code.PATH_OUTSIDE_BACKUP_ROOT

def test_confine_rejects_account_directory_equal_to_archive(root):
    archive = str(root / "archive")
    assert confine_code(Layout(archive + "/chroot", "/home/3723707", archive), root) == 10

def test_confine_rejects_account_directory_containing_archive(root):
    place = layout(account_with(), str(root))
    with pytest.raises(StepError) as caught:
        confine(place, str(root), place.directory + "/archive", LocalCLI())
    assert caught.value.code == Code.PATH_OUTSIDE_BACKUP_ROOT and "archive" in caught.value.message

def test_confine_rejects_account_directory_inside_archive(root):
    archive = root / "archive"
    place = Layout(f"{archive}/3723707/chroot", "/home/3723707", f"{archive}/3723707")
    assert confine_code(place, root) == Code.PATH_OUTSIDE_BACKUP_ROOT


# ------------------------------------------------------------------ settings

def backup_problems(tmp_path: Path, root: str, archive: str = "") -> tuple[Settings, list[str]]:
    """[Backup] with BACKUP_ROOT ``root`` as configobj hands it over; the start-up problems."""
    section = {"RSNAPSHOT_CONFIG_FILE": f"{tmp_path}/rsnapshot-%uid%.conf", "SET_QUOTA_CMD": "/bin/true",
               "CREATE_CHROOT_CMD": "/bin/true", "MOUNTPOINT": "/", "RSNAPSHOT_TEMPLATE": str(TEMPLATE),
               "RSNAPSHOT_CMD": "/bin/true", "CONFIGTEST": "cached", "BACKUP_ROOT": root,
               "DELETE_DATA": "archive", "ARCHIVE_DIR": archive, "MIN_ID_NUMBER": 1000,
               "JAIL_PROGRAMS": "sh rsync", "JAIL_LINK_LIMIT": 64000, "JAIL_CHECK_SECONDS": 60.0,
               "JAIL_RELINK_RATE": 50.0, "QUOTA_REPORT_CMD": "/usr/sbin/repquota"}
    ctx = ServiceContext(Config(tmp_path / "Backup.conf", None, {"Backup": section}, {}), LocalCLI())
    settings = Settings.of(ctx)
    return settings, settings_problems(settings, ctx)

@pytest.mark.parametrize("root", ["/", "/.", "//.", "/./", "//", "///", "/usr/..", "/var/backup/../.."])
def test_backup_root_spelling_slash_is_refused(tmp_path, root):
    settings, found = backup_problems(tmp_path, root)
    assert settings.backup_root == "/" and settings.archive_dir == "/archive"
    assert any(line.endswith("BACKUP_ROOT: must not be /") for line in found), found

@pytest.mark.parametrize("root, system", [("/var", "/var/cache"), ("/var/./", "/var/cache"),
                                          ("//usr", "/usr"), ("/etc/ldap/..", "/etc"),
                                          ("/var/backup/../lib", "/var/lib")])
def test_backup_root_that_is_or_holds_a_system_folder_is_refused(tmp_path, root, system):
    _, found = backup_problems(tmp_path, root)
    assert any(line.endswith(f"BACKUP_ROOT: must not be or hold the system folder {system}")
               for line in found), found

def test_backup_root_that_resolves_to_slash_is_refused(tmp_path):
    (tmp_path / "backup").symlink_to("/")
    _, found = backup_problems(tmp_path, f"{tmp_path}/backup")
    assert any(line.endswith("BACKUP_ROOT: must not be / (it resolves to /)") for line in found), found

def test_backup_root_and_archive_are_used_in_their_normal_spelling(tmp_path):
    (tmp_path / "backup").mkdir()
    settings, found = backup_problems(tmp_path, f"/{tmp_path}/./backup//", f"{tmp_path}/backup/./old/")
    assert found == []
    assert (settings.backup_root, settings.archive_dir) == (f"{tmp_path}/backup", f"{tmp_path}/backup/old")
    assert pattern_directory("3723707", settings.backup_root) == f"{tmp_path}/backup/7/707/723/3723707"


# ------------------------------------------------------------------ rsnapshot

def test_shipped_template_loads():
    template = Template.load(TEMPLATE)
    assert template.source == str(TEMPLATE) and "%retain%" in template.text

def test_template_unknown_placeholder():
    with pytest.raises(ValueError, match="%foo%"):
        Template("%snapshot_root% %retain% %backup_source% %foo%", "t")

def test_template_missing_retain():
    with pytest.raises(ValueError, match="%retain%"):
        Template("%snapshot_root% %backup_source%", "t")

@pytest.fixture
def conf_dir(tmp_path) -> Path:
    (tmp_path / "etc").mkdir()
    return tmp_path / "etc"

def configs_for(conf_dir: Path, template: Template | None = None, **kwargs) -> RsnapshotConfigs:
    return RsnapshotConfigs(template or Template.load(TEMPLATE), f"{conf_dir}/rsnapshot.conf.%uid%",
                            RSNAPSHOT, LocalCLI(), **kwargs)

def ready(account: Account, root: Path) -> Layout:
    """The account's layout with incoming/ and snapshots/ created."""
    place = layout(account, str(root))
    os.makedirs(place.incoming)
    os.makedirs(place.snapshot_root)
    return place

def leftovers(conf_dir: Path) -> list[str]:
    return [p.name for p in conf_dir.iterdir() if p.name.startswith(".")]

def test_install_writes_valid_config(root, conf_dir):
    configs, account = configs_for(conf_dir), account_with()
    place = ready(account, root)
    final = configs.install(account, place)
    assert final == f"{conf_dir}/rsnapshot.conf.3723707"
    assert sorted(p.name for p in conf_dir.iterdir()) == ["rsnapshot.conf.3723707"]
    lines = Path(final).read_text().splitlines()
    settings = [line for line in lines if line and not line.startswith("#")]
    assert all("\t" in line and " " not in line for line in settings), settings
    assert [line for line in settings if line.startswith("retain")] == [
        "retain\tdaily\t7", "retain\tweekly\t4", "retain\tmonthly\t3"]
    assert f"snapshot_root\t{place.snapshot_root}" in lines
    assert f"backup\t{place.incoming}\tincoming/" in lines
    done = subprocess.run([RSNAPSHOT, "-c", final, "configtest"], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert configs.configtests == 1

def test_install_caches_configtest_per_shape(root, conf_dir):
    configs = configs_for(conf_dir)
    first = account_with()
    configs.install(first, ready(first, root))
    same = account_with(uid="3723708")
    configs.install(same, ready(same, root))
    assert configs.configtests == 1
    other = account_with(uid="3723709", retain=(("daily", 14), ("weekly", 4), ("monthly", 3)))
    configs.install(other, ready(other, root))
    assert configs.configtests == 2
    assert "retain\tdaily\t14" in Path(configs.path_for("3723709")).read_text()
    assert leftovers(conf_dir) == []

def test_install_always_test_runs_every_time(root, conf_dir):
    configs = configs_for(conf_dir, always_test=True)
    account = account_with()
    place = ready(account, root)
    configs.install(account, place)
    configs.install(account, place)
    assert configs.configtests == 2

def test_install_without_incoming_fails_and_leaves_nothing(root, conf_dir):
    configs, account = configs_for(conf_dir), account_with()
    place = layout(account, str(root))
    os.makedirs(place.snapshot_root)
    assert code_of(configs.install, account, place) == Code.CANNOT_CREATE_RSNAPSHOT_CONFIGURATION == 7
    assert list(conf_dir.iterdir()) == []

def test_install_rejected_by_configtest_leaves_nothing_and_keeps_old_file(root, conf_dir):
    bad = Template(TEMPLATE.read_text().replace("/usr/bin/rsync", "/nonexistent/rsync"), "bad")
    configs, account = configs_for(conf_dir, bad), account_with()
    place = ready(account, root)
    with pytest.raises(StepError) as caught:
        configs.install(account, place)
    assert caught.value.code == Code.CANNOT_CREATE_RSNAPSHOT_CONFIGURATION
    assert "/nonexistent/rsync" in caught.value.message and "ERROR" in caught.value.message
    assert list(conf_dir.iterdir()) == [] and configs.proven_shapes == set()
    final = Path(configs.path_for(account.uid))
    final.write_text("old configuration\n")
    assert code_of(configs.install, account, place) == 7
    assert final.read_text() == "old configuration\n"
    assert leftovers(conf_dir) == []

def test_install_into_missing_folder_is_code_7(root, tmp_path):
    configs, account = configs_for(tmp_path / "missing"), account_with()
    assert code_of(configs.install, account, ready(account, root)) == 7

def test_remove_config(conf_dir):
    configs = configs_for(conf_dir)
    path = Path(configs.path_for("3723707"))
    path.write_text("x")
    assert configs.remove("3723707") == str(path)
    assert not path.exists()
    assert configs.remove("3723707") == str(path)       # already gone is fine

def test_remove_directory_in_place_is_code_8(conf_dir):
    configs = configs_for(conf_dir)
    Path(configs.path_for("3723707")).mkdir()
    assert code_of(configs.remove, "3723707") == Code.CANNOT_REMOVE_RSNAPSHOT_CONFIGURATION == 8


# ------------------------------------------------------------------ quota

@pytest.mark.parametrize("size, expected", [(0, 0), (1, 1), (1023, 1), (1024, 1), (1025, 2),
                                            (1073741824, 1048576)])
def test_blocks_round_up(size, expected):
    assert blocks(size) == expected

def test_quota_argv():
    assert quota_argv("/usr/sbin/setquota", 3723707, blocks(1073741824), "/") == [
        "/usr/sbin/setquota", "-u", "3723707", "1048576", "1048576", "0", "0", "/"]

def test_set_quota_success():
    set_quota("/bin/true", 3723707, 1073741824, "/", LocalCLI())

def test_a_step_alongside_keeps_the_requests_deadline_and_its_exceptions():
    """A helper thread runs a step in the caller's context: the request's deadline holds there too."""
    with within_deadline(0.5):
        result = alongside(lambda: LocalCLI(timeout=30).run(["sleep", "10"])).result(timeout=20)
    assert result.returncode == EXIT_TIMEOUT and "the request's deadline" in result.stderr
    with pytest.raises(Interrupted):                       # a BaseException reaches the caller as well
        alongside(_stopping).result(timeout=20)


def _stopping() -> None:
    raise Interrupted("the daemon is stopping")


@pytest.mark.parametrize("cmd", ["/bin/false", "/nonexistent/setquota"])
def test_set_quota_failure_is_code_6(cmd):
    assert code_of(set_quota, cmd, 3723707, 1024, "/", LocalCLI()) == Code.CANNOT_SET_QUOTA == 6


# ------------------------------------------------------------------ archive

@pytest.fixture
def account_dir(tmp_path) -> Path:
    directory = tmp_path / "backup/7/707/723/3723707"
    (directory / "chroot/home/3723707").mkdir(parents=True)
    (directory / "chroot/home/3723707/data").write_text("payload")
    return directory

def archive_into(archive: Path, account_dir: Path, how: str = "archive") -> str:
    target = archive_target(str(archive), "3723707", STAMP, LocalCLI()) if how == "archive" else None
    return dispose(str(account_dir), True, how, target, str(archive), LocalCLI())

def test_dispose_archive_moves_directory(tmp_path, account_dir):
    archive = tmp_path / "backup/archive"
    said = archive_into(archive, account_dir)
    target = archive / f"3723707-{STAMP}"
    assert not account_dir.exists()
    assert (target / "chroot/home/3723707/data").read_text() == "payload"
    assert stat.S_IMODE(archive.stat().st_mode) == 0o700
    assert str(target) in said

def test_dispose_archive_into_existing_archive(tmp_path, account_dir):
    archive = tmp_path / "backup/archive"
    (archive / "other").mkdir(parents=True)
    archive_into(archive, account_dir)
    assert sorted(p.name for p in archive.iterdir()) == [f"3723707-{STAMP}", "other"]

def test_archive_names_never_collide_within_one_second(tmp_path, account_dir):
    archive = tmp_path / "backup/archive"
    (archive / f"3723707-{STAMP}/earlier").mkdir(parents=True)      # full: a rename onto it fails
    (archive / f"3723707-{STAMP}-2").mkdir()                        # empty: a rename would replace it
    archive_into(archive, account_dir)
    assert (archive / f"3723707-{STAMP}-3/chroot/home/3723707/data").read_text() == "payload"
    assert (archive / f"3723707-{STAMP}/earlier").is_dir() and (archive / f"3723707-{STAMP}-2").is_dir()

def test_dispose_already_gone(tmp_path):
    archive = tmp_path / "archive"
    said = dispose(str(tmp_path / "gone"), False, "archive", None, str(archive), LocalCLI())
    assert "already gone" in said
    assert not archive.exists()

def test_dispose_keep(tmp_path, account_dir):
    archive_into(tmp_path / "archive", account_dir, "keep")
    assert (account_dir / "chroot/home/3723707/data").exists()
    assert not (tmp_path / "archive").exists()

def test_dispose_remove(tmp_path, account_dir):
    archive_into(tmp_path / "archive", account_dir, "remove")
    assert not account_dir.exists()
    assert not (tmp_path / "archive").exists()

def test_archive_dir_is_a_file(tmp_path, account_dir):
    archive = tmp_path / "archive"
    archive.write_text("not a folder")
    assert code_of(archive_into, archive, account_dir) == Code.CANNOT_ARCHIVE_ACCOUNT_DATA == 9
    assert account_dir.exists()


# ------------------------------------------------------------------ survey, ownership, home

def script(tmp_path: Path, body: str) -> str:
    path = tmp_path / "create-chroot"
    path.write_text(f'#!/bin/sh\nprintf "%s\\n" "$0" "$@" > "{tmp_path}/argv"\n{body}\n')
    path.chmod(0o755)
    return str(path)

def local_account() -> Account:
    return account_with(uid_number=os.getuid() or 3723707, gid_number=os.getgid() or 3723707)

UUID = "6a1c1f7e-0000-4000-8000-000000000001"

def look(place: Layout, root: Path) -> dict:
    nodes = survey(homes.paths(place, str(root)), LocalCLI())
    homes.check_paths(place, str(root), nodes)
    return nodes

def build(account: Account, place: Layout, root: Path, cmd: str, uuid: str = UUID) -> Verdict:
    nodes = look(place, root)
    verdict = judge(account, uuid, place, nodes, LocalCLI())
    homes.build(account, place, uuid, verdict, nodes, Builder(cmd, None, None), str(root), LocalCLI())
    return verdict

def test_survey_reports_kinds_owners_and_absence(tmp_path):
    (tmp_path / "d").mkdir(mode=0o750)
    (tmp_path / "f").write_text("")
    (tmp_path / "l").symlink_to("/etc")
    nodes = survey([str(tmp_path / n) for n in ("d", "f", "l", "none", "f/under")], LocalCLI())
    assert nodes[str(tmp_path / "d")].is_dir and nodes[str(tmp_path / "d")].mode == 0o750
    assert nodes[str(tmp_path / "f")].is_file and nodes[str(tmp_path / "l")].is_link
    assert nodes[str(tmp_path / "none")] is None and nodes[str(tmp_path / "f/under")] is None

def test_build_creates_a_new_account_root_owned_but_incoming(tmp_path, root):
    cmd = script(tmp_path, 'mkdir -p "$1$2"')
    account = local_account()
    place = layout(account, str(root))
    assert build(account, place, root, cmd) is Verdict.NEW
    assert (tmp_path / "argv").read_text().splitlines() == [
        cmd, place.jail, place.home, "3723707", str(account.uid_number), str(account.gid_number)]
    assert Path(place.marker).read_text() == UUID + "\n"
    for folder in place.chain:
        assert (os.stat(folder).st_uid, stat.S_IMODE(os.stat(folder).st_mode)) == (0, 0o755)
    assert os.stat(place.incoming).st_uid == account.uid_number
    assert stat.S_IMODE(os.stat(place.incoming).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(place.snapshot_root).st_mode) == 0o700

def test_build_gives_new_folders_their_mode_whatever_the_umask(tmp_path, root):
    account = local_account()
    place = layout(account, str(root))
    old = os.umask(0)
    try:
        build(account, place, root, script(tmp_path, 'mkdir -p "$1$2"'))
    finally:
        os.umask(old)
    for folder in place.above(str(root))[1:] + [place.directory]:
        assert stat.S_IMODE(os.stat(folder).st_mode) == 0o755, folder
    look(place, root)                       # and the next request finds nothing to refuse

def test_dry_run_judges_like_a_real_run_and_changes_nothing(tmp_path, root, capsys):
    from provisioning.transport import DryRun
    account = local_account()
    place = layout(account, str(root))
    build(account, place, root, script(tmp_path, 'mkdir -p "$1$2"'))
    before = sorted(str(p) for p in root.rglob("*"))
    dry = DryRun(LocalCLI())
    nodes = survey(homes.paths(place, str(root)), dry)                 # stat runs for real
    assert nodes[place.incoming.rstrip("/")].uid == account.uid_number
    assert code_of(judge, account, "someone-else", place, nodes, dry) == 13   # so does the marker's head
    other = account_with(uid="3723708", uid_number=account.uid_number, gid_number=account.gid_number)
    fresh = layout(other, str(root))
    nodes = survey(homes.paths(fresh, str(root)), dry)
    homes.build(other, fresh, UUID, judge(other, UUID, fresh, nodes, dry), nodes,
                Builder(script(tmp_path, "exit 1"), None, None), str(root), dry)
    assert sorted(str(p) for p in root.rglob("*")) == before
    assert "DRY-RUN: would run: " in capsys.readouterr().out

def test_build_again_is_ours_and_runs_nothing(tmp_path, root):
    account = local_account()
    place = layout(account, str(root))
    build(account, place, root, script(tmp_path, 'mkdir -p "$1$2"'))
    os.unlink(tmp_path / "argv")
    assert build(account, place, root, script(tmp_path, "exit 1")) is Verdict.OURS
    assert not (tmp_path / "argv").exists()

def test_another_entry_is_refused_before_anything_changes(tmp_path, root):
    account = local_account()
    place = layout(account, str(root))
    build(account, place, root, script(tmp_path, 'mkdir -p "$1$2"'))
    before = Path(place.marker).read_text()
    assert code_of(build, account, place, root, script(tmp_path, "exit 1"),
                   uuid="someone-else") == Code.NOT_THIS_ENTRYS_ACCOUNT == 13
    assert Path(place.marker).read_text() == before

def test_an_unmarked_directory_is_adopted_only_with_its_owners_incoming(tmp_path, root):
    account = local_account()
    place = layout(account, str(root))
    os.makedirs(place.incoming)
    os.chown(place.incoming, account.uid_number + 1, account.gid_number)
    assert code_of(build, account, place, root, script(tmp_path, "exit 1")) == 13
    assert not os.path.exists(place.marker)
    os.chown(place.incoming, *account.owner)
    assert build(account, place, root, script(tmp_path, "exit 1")) is Verdict.ADOPT
    assert Path(place.marker).read_text() == UUID + "\n"

@pytest.mark.parametrize("holds", ["root's folders only", "snapshots"])
def test_an_unmarked_folder_without_incoming_is_refused_whatever_it_holds(tmp_path, root, holds):
    """Issue 18: judged on the few paths surveyed (all root's), it was finished as this entry's.

    What snapshots/ holds was never looked at: nothing shows whose the folder is, so it is refused.
    """
    account = local_account()
    place = layout(account, str(root))
    os.makedirs(place.jail + "/home")                     # root's folders, no incoming/, no marker
    if holds == "snapshots":
        os.makedirs(place.snapshot_root + "daily.0/incoming")
        Path(place.snapshot_root + "daily.0/incoming/backup.tar").write_text("someone's data")
    before = sorted(str(p) for p in root.rglob("*"))
    assert code_of(build, account, place, root, script(tmp_path, 'mkdir -p "$1$2"')) == 13
    assert sorted(str(p) for p in root.rglob("*")) == before and not (tmp_path / "argv").exists()


class CrashBeforeRename(LocalCLI):
    """The daemon dies just before the new account directory is moved into place."""

    def rename(self, src: str, dst: str) -> None:
        raise OSError("killed")


def test_a_new_account_directory_is_never_there_without_its_marker(tmp_path, root):
    account = local_account()
    place = layout(account, str(root))
    nodes = look(place, root)
    with pytest.raises(StepError):
        homes.build(account, place, UUID, judge(account, UUID, place, nodes, LocalCLI()), nodes,
                    script(tmp_path, 'mkdir -p "$1$2"'), str(root), CrashBeforeRename())
    assert not os.path.exists(place.directory)            # not there unmarked
    staging = Path(place.directory).parent / f".3723707.new-{UUID}"
    assert os.listdir(staging) == [".entryUUID"]
    # The next attempt takes the staging folder up again.
    assert build(account, place, root, script(tmp_path, 'mkdir -p "$1$2"')) is Verdict.NEW
    assert Path(place.marker).read_text() == UUID + "\n" and os.path.isdir(place.incoming)
    assert not staging.exists()
    assert stat.S_IMODE(os.stat(place.directory).st_mode) == 0o755 and os.stat(place.directory).st_uid == 0


def test_a_folder_of_a_customers_is_never_reclaimed(tmp_path, root):
    """An old-layout home (the customer's) whose incoming/ the customer removed is no skeleton."""
    account = local_account()
    place = layout(account, str(root))
    os.makedirs(place.home_path)
    os.chown(place.home_path, *account.owner)
    assert code_of(build, account, place, root, script(tmp_path, "exit 1")) == 13
    assert not os.path.exists(place.marker)


def test_no_entry_uuid_is_refused(tmp_path, root):
    account = local_account()
    place = layout(account, str(root))
    assert code_of(build, account, place, root, script(tmp_path, "exit 1"), uuid=None) == 13

def test_build_moves_the_old_layout_to_the_new(tmp_path, root):
    account = local_account()
    place = layout(account, str(root))
    os.makedirs(place.incoming)
    os.makedirs(place.old_snapshot_root + "/daily.0")
    for path in (place.home_path, place.incoming):
        os.chown(path, *account.owner)
        os.chmod(path, 0o700)
    build(account, place, root, script(tmp_path, "exit 1"))
    assert (os.stat(place.home_path).st_uid, stat.S_IMODE(os.stat(place.home_path).st_mode)) == (0, 0o755)
    assert os.path.isdir(place.snapshot_root + "daily.0") and not os.path.exists(place.old_snapshot_root)
    assert stat.S_IMODE(os.stat(place.snapshot_root).st_mode) == 0o700

def test_build_leaves_a_customers_old_snapshots_where_they_are(tmp_path, root):
    account = local_account()
    place = layout(account, str(root))
    os.makedirs(place.incoming)
    os.chown(place.incoming, *account.owner)
    os.symlink(tmp_path, place.old_snapshot_root)
    build(account, place, root, script(tmp_path, "exit 1"))
    assert os.path.islink(place.old_snapshot_root)
    assert os.listdir(place.snapshot_root) == []

def test_build_script_failure_is_code_5(tmp_path, root):
    account = local_account()
    place = layout(account, str(root))
    assert code_of(build, account, place, root, script(tmp_path, "exit 1")) == 5

def test_build_script_without_home_is_code_5(tmp_path, root):
    account = local_account()
    place = layout(account, str(root))
    assert code_of(build, account, place, root, script(tmp_path, "exit 0")) == Code.CANNOT_CREATE_HOME_DIR
    assert not os.path.exists(place.incoming)

def test_a_file_where_the_jail_should_be_is_code_4(tmp_path, root):
    account = local_account()
    place = layout(account, str(root))
    os.makedirs(place.directory)
    Path(place.jail).write_text("a file where the jail should be")
    assert code_of(look, place, root) == Code.CANNOT_CHECK_HOME_DIR_PRESENCE == 4

@pytest.mark.parametrize("which", ["incoming", "home", "snapshots", "jail"])
def test_a_link_in_the_account_is_code_15(tmp_path, root, which):
    account = local_account()
    place = layout(account, str(root))
    path = {"incoming": place.incoming, "home": place.home_path, "snapshots": place.snapshot_root,
            "jail": place.jail}[which].rstrip("/")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    (tmp_path / "target").mkdir()
    os.symlink(tmp_path / "target", path)
    assert code_of(look, place, root) == Code.UNSAFE_ACCOUNT_PATH == 15

def test_a_folder_above_the_account_others_can_write_is_code_15(root):
    place = layout(local_account(), str(root))
    os.makedirs(os.path.dirname(place.directory))
    os.chmod(os.path.dirname(place.directory), 0o777)
    assert code_of(look, place, root) == Code.UNSAFE_ACCOUNT_PATH


# ------------------------------------------------------------------ account_ldif

def ldifs(*argv: str) -> dict[str, list]:
    files = account_ldif.account_ldifs(account_ldif.parse_args(["--uid", "3724300", *argv]))
    return {name: parse_ldif(text) for name, text in files.items()}

def test_account_ldifs_file_names():
    assert list(ldifs()) == ["01_add_3724300.ldif", "02_modify_3724300.ldif",
                             "03_delete_3724300.ldif", "04_remove_3724300.ldif"]

def test_account_ldif_add():
    [add] = ldifs()["01_add_3724300.ldif"]
    assert add.kind == "add" and add.dn.startswith("uid=3724300,")
    assert add.attrs["sstProvisioningMode"] == [b"add"]
    assert add.attrs["sstProvisioningState"] == [b"0"]
    assert add.attrs["sstProvisioningExecutionDate"] == [b"0"]
    assert add.attrs["sstIsActive"] == [b"TRUE"]
    assert sorted(add.attrs["objectClass"]) == [b"account", b"posixAccount", b"shadowAccount",
                                                b"sstBackup", b"sstProvisioning", b"sstRelationship"]

def test_account_ldif_add_is_a_valid_account():
    [add] = ldifs()["01_add_3724300.ldif"]
    account = parse(Entry.from_ldap(add.dn, add.attrs), 1000)
    assert account.retain == (("daily", 7), ("weekly", 4), ("monthly", 3))
    assert layout(account, "/var/backup") == layout(account_with(uid="3724300"), "/var/backup")

def test_account_ldif_modify():
    [change] = ldifs()["02_modify_3724300.ldif"]
    assert change.kind == "modify"
    assert (ldap.MOD_REPLACE, "sstProvisioningMode", [b"modify"]) in change.mods

def test_account_ldif_delete_request():
    [change] = ldifs()["03_delete_3724300.ldif"]
    assert change.kind == "modify"
    assert (ldap.MOD_REPLACE, "sstIsActive", [b"FALSE"]) in change.mods
    assert (ldap.MOD_REPLACE, "sstProvisioningMode", [b"delete"]) in change.mods

def test_account_ldif_remove():
    [change] = ldifs()["04_remove_3724300.ldif"]
    assert change.kind == "delete" and change.dn.startswith("uid=3724300,")

def test_account_ldif_non_ascii_name_is_base64():
    text = account_ldif.account_ldifs(account_ldif.parse_args(["--uid", "3724300", "--givenname", "Jürg"]))
    cn_line = next(line for line in text["01_add_3724300.ldif"].splitlines() if line.startswith("cn"))
    assert cn_line.startswith("cn:: ")
    assert base64.b64decode(cn_line[5:]).decode() == "Jürg Surname"
    [add] = parse_ldif(text["01_add_3724300.ldif"])
    assert add.attrs["cn"] == ["Jürg Surname".encode()]

def test_account_ldif_name_with_newline_cannot_inject_attributes():
    # RFC 2849: LF/CR are not SAFE-CHARs, such a value must be base64-encoded.
    [add] = ldifs("--givenname", "Eve\nuidNumber: 0")["01_add_3724300.ldif"]
    assert add.attrs["cn"] == [b"Eve\nuidNumber: 0 Surname"]
    assert add.attrs["uidNumber"] == [b"3724300"]

@pytest.mark.parametrize("uid", ["12", "abc", "12345678901", ""])
def test_parse_args_rejects_bad_uid(uid, capsys):
    with pytest.raises(SystemExit):
        account_ldif.parse_args(["--uid", uid])


def test_every_return_value_has_a_meaning_for_status_retry_and_mail():
    from provisioning_backup_rsnapshot.codes import Code
    from provisioning_backup_rsnapshot.operations import MEANINGS
    assert set(MEANINGS) == set(Code)
    doc = (Path(__file__).parents[1] / "docs/return-values.md").read_text()
    for code in Code:
        assert f"| {int(code)} | {code.name} |" in doc


def test_a_step_no_helper_could_be_started_for_never_runs(monkeypatch):
    """The executor queues a step before it starts a thread: a failed start must not leave it to run later."""
    from provisioning_backup_rsnapshot import alongside as module
    queued, ran = [], []

    class NoThreads:
        def submit(self, job):
            queued.append(job)
            raise RuntimeError("can't start new thread")
    monkeypatch.setattr(module, "_HELPERS", NoThreads())
    with pytest.raises(RuntimeError, match="can't start new thread"):
        module.alongside(lambda: ran.append(1))
    assert queued[0]() is None and ran == []          # the helper that takes it up later does nothing


class _StepsRecorded:
    """A plugin whose three steps of an add (home, quota, configuration) only say when they ran,
    and in which thread."""

    def __init__(self, monkeypatch):
        from types import SimpleNamespace
        from provisioning_backup_rsnapshot import plugin as module
        import threading
        self.order, self.threads = [], set()

        def step(name, result=None):
            self.order.append(name)
            self.threads.add(threading.get_ident())
            return result
        self.plugin = module.BackupRsnapshot()
        self.plugin.settings = SimpleNamespace(set_quota_cmd="setquota", mountpoint="/")
        self.plugin.configs = SimpleNamespace(
            install=lambda account, place: step("configuration", "installed"),
            write=lambda account, place: step("configuration written", "staged"),
            prove=lambda staged, place: step("configuration proven"),
            commit=lambda staged: step("configuration", "committed"))
        monkeypatch.setattr(module, "set_quota", lambda *args: step("quota"))
        self.home_there = False

        def home(waiting=None):
            # home.build: the folders and the owner marker, then CREATE_CHROOT_CMD unless the home is there
            step("folders")
            if not self.home_there:
                if waiting is not None:
                    waiting()
                step("command")
        self.home = home
        self.account = SimpleNamespace(uid="3723707", uid_number=3723707, quota_bytes=1 << 30)
        self.ctx = SimpleNamespace(dry_run=False, transport=None)

    def apply(self):
        with self.plugin.company.joined():          # as _guarded does for every request
            return self.plugin._apply(None, self.home, self.account, None, self.ctx)


def test_a_request_worked_alone_runs_quota_and_configuration_beside_the_homes_command(monkeypatch):
    from provisioning_backup_rsnapshot import plugin as module
    steps = _StepsRecorded(monkeypatch)
    monkeypatch.setattr(module, "alongside", lambda step: steps.order.append("beside") or alongside(step))
    assert steps.apply() == "committed"
    # The helpers start only when the command is about to run: before, the request's own steps
    # are Python as much as theirs, and they would only take turns for the GIL.
    started = [n for n, name in enumerate(steps.order) if name == "beside"]
    assert steps.order[0] == "folders" and started[0] == 1 and len(started) == 2, steps.order
    assert started[1] < steps.order.index("command"), steps.order
    done = [name for name in steps.order if name != "beside"]
    assert sorted(done[1:4]) == ["command", "configuration written", "quota"]
    assert done[-2:] == ["configuration proven", "configuration"]
    assert len(steps.threads) >= 2                   # helpers besides the request's own thread


def test_with_the_home_there_already_nothing_waits_and_the_steps_run_in_turn(monkeypatch):
    from provisioning_backup_rsnapshot import plugin as module
    steps = _StepsRecorded(monkeypatch)
    steps.home_there = True
    monkeypatch.setattr(module, "alongside", lambda step: pytest.fail("a helper thread was used"))
    assert steps.apply() == "installed"
    assert steps.order == ["folders", "quota", "configuration"]
    assert len(steps.threads) == 1


def test_while_another_request_is_in_hand_the_steps_run_one_after_the_other(monkeypatch):
    """In a burst the helpers only cost CPU (alongside.Company): same steps, same order of failure."""
    from provisioning_backup_rsnapshot import plugin as module
    steps = _StepsRecorded(monkeypatch)
    monkeypatch.setattr(module, "alongside", lambda step: pytest.fail("a helper thread was used"))
    with steps.plugin.company.joined():              # the other request
        assert steps.apply() == "installed"
    assert steps.order == ["folders", "command", "quota", "configuration"]
    assert len(steps.threads) == 1
    # Once it is done, a request alone has its helpers again.
    monkeypatch.setattr(module, "alongside", alongside)
    steps.order.clear()
    assert steps.apply() == "committed"


def test_the_company_counts_a_request_that_failed_out_again():
    from provisioning_backup_rsnapshot.alongside import Company
    company = Company()
    with pytest.raises(RuntimeError):
        with company.joined():
            with company.joined():
                assert not company.alone()
                raise RuntimeError("a step failed")
    with company.joined():
        assert company.alone()

"""Backup/Rsnapshot's lines of ``provisioning-daemon --check``.

Everything goes through the transport, so with CLISSH the gateway host is
what gets checked. Nothing is changed: the template is proven in a
temporary folder that is removed afterwards, and quotas are only looked at.
"""
from __future__ import annotations

import posixpath
import re

from provisioning.api import CheckLine, ServiceContext, Transport

from provisioning_backup_rsnapshot import builder as builders
from provisioning_backup_rsnapshot import jailimage
from provisioning_backup_rsnapshot.account import Account, Layout
from provisioning_backup_rsnapshot.rsnapshot import Template, values_for
from provisioning_backup_rsnapshot.settings import Settings

NAME = "Backup/Rsnapshot"
# The quota package's setquota: only for it does "no user quota on MOUNTPOINT"
# mean that every add will fail.
QUOTA_TOOLS_SETQUOTA = "/usr/sbin/setquota"
TEMP_PREFIX = "provisioning-check."
# A made-up account for rendering the template (never written to LDAP).
TEST_UID = "1000000"
_QUOTA_STATE = re.compile(r"user quota on (\S+) \((.*?)\) is (on|off)")


def check(ctx: ServiceContext) -> list[CheckLine]:
    """Every line of the plugin's check, in order.

    A program or folder that does not exist gets no line here: the start-up
    check (settings.problems), whose lines --check shows just before these,
    reports it already, and one problem is counted once.
    """
    settings = Settings.of(ctx)
    transport = ctx.transport
    lines = [_program(transport, "SET_QUOTA_CMD", settings.set_quota_cmd), _builder(settings, transport),
             _program(transport, "RSNAPSHOT_CMD", settings.rsnapshot_cmd), _jail_programs(settings, transport)]
    lines += [_folder(transport, key, path) for key, path in (
        ("BACKUP_ROOT", settings.backup_root), ("MOUNTPOINT", settings.mountpoint),
        ("RSNAPSHOT_CONFIG_FILE", posixpath.dirname(settings.config_file)))]
    lines.append(template_line(settings, transport))
    lines.append(quota_line(settings, transport))
    return [line for line in lines if line is not None]


def _program(transport: Transport, key: str, path: str) -> CheckLine | None:
    name = f"{NAME} {key}"
    result = transport.run(["test", "-f", path, "-a", "-x", path])
    if result.ok:
        return CheckLine.ok(name, f"{path} is an executable file")
    if result.returncode != 1:
        return CheckLine.warn(name, f"cannot tell whether {path} is executable: {result.describe()}")
    if not _exists(transport, path):
        return None                  # the start-up check says so
    return CheckLine.fail(name, f"{path} is not an executable file (chmod +x it, or name the program)")


def _builder(settings: Settings, transport: Transport) -> CheckLine | None:
    """CREATE_CHROOT_CMD: the shipped builder (run in the daemon) or a program that must be executable."""
    chosen = builders.choose(settings, transport)
    if chosen.kind is None:
        return _program(transport, "CREATE_CHROOT_CMD", settings.create_chroot_cmd)
    return CheckLine.ok(f"{NAME} CREATE_CHROOT_CMD", chosen.describe())


def _jail_programs(settings: Settings, transport: Transport) -> CheckLine:
    """JAIL_PROGRAMS: each found where the jails are, with the libraries ldd names."""
    name = f"{NAME} JAIL_PROGRAMS"
    try:
        found = transport.call(builders.MODULES, "programs", settings.jail_programs)
    except OSError as err:
        return CheckLine.fail(name, str(err))
    missing = [program for program, where in found.items() if where.get("missing")]
    if missing:
        return CheckLine.fail(name, f"not installed: {', '.join(missing)} (a name is looked for in "
                                    f"{jailimage.SEARCH_PATH}; or give an absolute path)")
    refused = [where["refused"] for where in found.values() if "refused" in where]
    if refused:
        return CheckLine.fail(name, "; ".join(refused))
    return CheckLine.ok(name, ", ".join(_runs(program, where["paths"]) for program, where in found.items()))


def _runs(program: str, paths: list[str]) -> str:
    """"sh is /usr/bin/sh"; a script with its interpreters: "x is /opt/x, run by /usr/bin/bash"."""
    return f"{program} is {paths[0]}" + (f", run by {' and '.join(paths[1:])}" if len(paths) > 1 else "")


def _folder(transport: Transport, key: str, path: str) -> CheckLine | None:
    name = f"{NAME} {key}"
    result = transport.run(["test", "-d", path])
    if result.ok:
        return CheckLine.ok(name, f"folder {path} exists")
    if result.returncode != 1:
        return CheckLine.warn(name, f"cannot tell whether {path} exists: {result.describe()}")
    if not _exists(transport, path):
        return None                  # the start-up check says so
    return CheckLine.fail(name, f"{path} is not a folder")


def _exists(transport: Transport, path: str) -> bool:
    try:
        return transport.exists(path)
    except OSError:
        return False


# ------------------------------------------------------------------ template

def template_line(settings: Settings, transport: Transport) -> CheckLine:
    """The template, rendered for a made-up account, passes ``rsnapshot configtest``."""
    name = f"{NAME} RSNAPSHOT_TEMPLATE"
    try:
        template = Template.load(settings.template)
    except (OSError, ValueError) as err:
        return CheckLine.fail(name, f"{settings.template}: {err}")
    made = transport.run(["mktemp", "-d", "-t", f"{TEMP_PREFIX}XXXXXXXX"])
    folder = made.stdout.strip()
    if not made.ok or not _is_our_temp(folder):
        return CheckLine.warn(name, f"cannot make a temporary folder to test {settings.template} in: "
                                    f"{made.describe()}")
    try:
        return _configtest(name, template, settings, transport, folder)
    finally:
        if _is_our_temp(folder):      # never anything but the folder mktemp just made
            transport.remove_tree(folder)


def _is_our_temp(folder: str) -> bool:
    base = posixpath.basename(folder)
    return (folder.startswith("/") and posixpath.normpath(folder) == folder
            and base.startswith(TEMP_PREFIX) and len(base) > len(TEMP_PREFIX))


def _configtest(name: str, template: Template, settings: Settings, transport: Transport,
                folder: str) -> CheckLine:
    account = Account(f"uid={TEST_UID} (made up by --check)", TEST_UID, int(TEST_UID), int(TEST_UID),
                      0, (("daily", 7), ("weekly", 4), ("monthly", 3)), None)
    place = Layout(f"{folder}/{TEST_UID}/chroot", f"/home/{TEST_UID}", f"{folder}/{TEST_UID}")
    config_file = f"{folder}/rsnapshot.conf.{TEST_UID}"
    try:
        transport.makedirs(place.incoming.rstrip("/"), mode=0o700)
        transport.makedirs(place.snapshot_root.rstrip("/"), mode=0o755)
        transport.write_file(config_file, template.render(values_for(account, place)).encode(), mode=0o644)
    except OSError as err:
        return CheckLine.warn(name, f"cannot prepare the test in {folder}: {err}")
    result = transport.run([settings.rsnapshot_cmd, "-c", config_file, "configtest"])
    if result.ok:
        return CheckLine.ok(name, f"{settings.template} passes rsnapshot configtest "
                                  f"(rendered for a made-up account in a temporary folder)")
    errors = [line.strip() for line in (result.stdout + result.stderr).splitlines() if "ERROR" in line]
    return CheckLine.fail(name, f"{settings.template} fails rsnapshot configtest: "
                                f"{' / '.join(errors[:3]) or result.describe()}")


# --------------------------------------------------------------------- quota

def quota_line(settings: Settings, transport: Transport) -> CheckLine | None:
    """Whether MOUNTPOINT has user quota on, as ``quotaon -p`` reports it."""
    name = f"{NAME} quota on MOUNTPOINT"
    mountpoint = settings.mountpoint
    if not _exists(transport, mountpoint):
        return None                  # the start-up check says so
    result = transport.run(["quotaon", "-p", "-u", mountpoint])
    said = " ".join((result.stdout + " " + result.stderr).split())
    if result.returncode == 127:
        return CheckLine.warn(name, f"cannot tell whether {mountpoint} has user quota on: quotaon is not "
                                    f"installed (Debian package quota)")
    state = _QUOTA_STATE.search(said)
    if state and state.group(3) == "on":
        return CheckLine.ok(name, f"user quota is on for {state.group(1)} ({state.group(2)})")
    if state:
        problem = f"user quota is off for {state.group(1)}: limits are not enforced; run quotaon -u {mountpoint}"
    elif "has no quota enabled" in said:
        problem = (f"{mountpoint} has no user quota (quotaon -p: {said}); mount it with usrquota "
                   f"(or enable the ext4 quota feature), then quotacheck -u and quotaon -u")
    else:
        return CheckLine.warn(name, f"cannot tell whether {mountpoint} has user quota on: quotaon -p said "
                                    f"{said or 'nothing'} (exit {result.returncode})")
    if _is_quota_tools(settings.set_quota_cmd, transport):
        return CheckLine.fail(name, f"{problem}; until then setquota fails on every add")
    return CheckLine.warn(name, f"{problem}; SET_QUOTA_CMD {settings.set_quota_cmd} is not the quota "
                                f"package's setquota, so it may not need it: cannot tell")


def _is_quota_tools(command: str, transport: Transport) -> bool:
    try:
        return (_exists(transport, QUOTA_TOOLS_SETQUOTA)
                and transport.realpath(command) == transport.realpath(QUOTA_TOOLS_SETQUOTA))
    except OSError:
        return False

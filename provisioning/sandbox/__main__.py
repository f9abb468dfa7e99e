"""python -m provisioning.sandbox: a throwaway directory and a daemon in the foreground.

Starts a slapd on 127.0.0.1 with our schema and syncprov, writes a sandbox
configuration whose every path lies under the sandbox folder, runs the
Backup/Rsnapshot daemon with --debug, and adds one demo account so that its
add -> adding -> added shows in the log at once. Ctrl-C stops everything.
"""
from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import threading
import time

from provisioning.sandbox.layout import (
    SandboxLayout, SandboxRefused, installed_command, service_sections, write_configs,
)
from provisioning.sandbox.slapd import ACCOUNTS_BASE, StoneySlapd

DEMO_UID = "3723707"
READY = "initial synchronisation"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sandbox", description=__doc__.splitlines()[0])
    parser.add_argument("--no-demo", action="store_true", help="do not add the demo account")
    parser.add_argument("--chroot", choices=("home", "full"), default="full",
                        help="CREATE_CHROOT_CMD: the original's home-only script, or the full jail")
    args = parser.parse_args(argv)

    layout = SandboxLayout.default()
    if layout.running_pid():
        print(f"sandbox: a sandbox already runs in {layout.root} (process {layout.running_pid()})", file=sys.stderr)
        return 1
    try:
        layout.reset()
    except SandboxRefused as err:
        print(f"sandbox: {err}", file=sys.stderr)
        return 1
    layout.create()
    layout.pid_file.write_text(f"{os.getpid()}\n")
    try:
        return _run(layout, args)
    finally:
        layout.pid_file.unlink(missing_ok=True)


def _run(layout: SandboxLayout, args: argparse.Namespace) -> int:
    slapd = StoneySlapd(rundir=str(layout.root))
    slapd.start()
    script = "prov-backup-create-chroot" if args.chroot == "full" else "prov-backup-create-home"
    write_configs(layout, service_sections(layout, uri=slapd.ldap_uri, bind_dn=slapd.root_dn,
                                           password=slapd.root_pw, subtree=ACCOUNTS_BASE,
                                           create_chroot_cmd=str(installed_command(script))))
    _write_demo_ldifs(layout)
    _banner(layout, slapd)
    daemon = subprocess.Popen([sys.executable, "-m", "provisioning", "-c", str(layout.service_config),
                               "-g", str(layout.global_config), "--debug"],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
    signal.signal(signal.SIGINT, lambda *_: daemon.send_signal(signal.SIGTERM))
    signal.signal(signal.SIGTERM, lambda *_: daemon.send_signal(signal.SIGTERM))
    ready = threading.Event()
    if not args.no_demo:
        threading.Thread(target=_add_demo, args=(layout, ready), daemon=True).start()
    try:
        for line in daemon.stdout:
            print(line, end="", flush=True)
            if READY in line:
                ready.set()
        return daemon.wait()
    finally:
        slapd.stop()


def _write_demo_ldifs(layout: SandboxLayout) -> None:
    from provisioning_backup_rsnapshot import account_ldif

    for uid in (DEMO_UID, "3724300"):
        args = account_ldif.parse_args(["--uid", uid, "--output", str(layout.data),
                                        "--backup-root", str(layout.backup_root)])
        for name, text in account_ldif.account_ldifs(args).items():
            (layout.data / name).write_text(text)


def _add_demo(layout: SandboxLayout, ready: threading.Event) -> None:
    from provisioning.operator.ldifload import main as load

    if ready.wait(timeout=60):
        time.sleep(0.2)
        print(f"sandbox: adding demo account {DEMO_UID} from {layout.data}/01_add_{DEMO_UID}.ldif", flush=True)
        load(["-c", str(layout.service_config), str(layout.data / f"01_add_{DEMO_UID}.ldif")])


def _banner(layout: SandboxLayout, slapd: StoneySlapd) -> None:
    # With -c: the installed command never falls back to a sandbox's configuration.
    load = f"{installed_command('loadOpenLDAPsingleLDIF')} -c {layout.service_config}"
    print(f"""
sandbox: slapd at {slapd.ldap_uri} ({slapd.root_dn}), data under {layout.root}
sandbox: daemon configuration {layout.service_config}
sandbox: from a second terminal, walk account 3724300 through the wiki's four steps:
    {load} {layout.data}/01_add_3724300.ldif
    {load} {layout.data}/02_modify_3724300.ldif
    {load} {layout.data}/03_delete_3724300.ldif
    {load} {layout.data}/04_remove_3724300.ldif
sandbox: Ctrl-C stops the daemon and slapd.
""", flush=True)


if __name__ == "__main__":
    sys.exit(main())

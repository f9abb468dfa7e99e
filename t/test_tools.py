"""The wiki's Testing section: createBackupAccountLDIF, loadOpenLDAPsingleLDIF, four steps."""
from __future__ import annotations

import subprocess
import sys

from provisioning.operator.ldifload import parse_ldif
from provisioning.sandbox.layout import write_recorder

from helpers import DaemonProcess, STAMP, wait_until

UID = "3724300"


def _tool(module: str, *args: str) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result


def _held_setquota(host) -> object:
    """setquota that records its call and then waits for a "go" file (consumed): the
    request stays in its -ing mode until the test lets it finish."""
    go = host.layout.root / "go"
    held = host.layout.root / "bin/held-setquota"
    held.write_text(f"#!/bin/sh\nwhile [ ! -e {go} ]; do sleep 0.02; done\nrm -f {go}\n")
    held.chmod(0o755)
    write_recorder(host.layout.setquota, host.layout.setquota_log, then=str(held))
    return go


def test_the_four_ldifs_reproduce_the_wikis_table(host, directory):
    data = host.layout.root / "data"
    _tool("provisioning_backup_rsnapshot.account_ldif", "--uid", UID, "--output", str(data),
          "--base", host.subtree, "--backup-root", str(host.layout.backup_root))
    assert sorted(p.name for p in data.iterdir()) == [f"01_add_{UID}.ldif", f"02_modify_{UID}.ldif",
                                                       f"03_delete_{UID}.ldif", f"04_remove_{UID}.ldif"]
    go = _held_setquota(host)
    daemon = DaemonProcess(host).start()
    dn = directory.dn(UID)
    load = ["-c", str(host.config)]
    added = parse_ldif((data / f"01_add_{UID}.ldif").read_text())[0].attrs
    try:
        for step, (ldif, working, done) in enumerate([("01_add", "adding", "added"),
                                                      ("02_modify", "modifying", "modified"),
                                                      ("03_delete", "deleting", "deleted")], 1):
            _tool("provisioning.operator.ldifload", *load, str(data / f"{ldif}_{UID}.ldif"))
            # Step 1 of the wiki: the daemon claimed the request and works on it.
            entry = directory.wait_mode(dn, working)
            assert (entry["sstProvisioningState"], entry["sstProvisioningExecutionDate"]) == ("0", "0")
            assert "sstProvisioningReturnValue" not in entry
            wait_until(lambda: len(host.quota_calls()) == step, f"setquota call {step}")
            go.touch()
            # Step 2: finished, with a UTC time stamp.
            entry = directory.wait_mode(dn, done)
            assert STAMP.match(entry["sstProvisioningState"])
            assert (entry["sstProvisioningExecutionDate"], entry["sstProvisioningReturnValue"]) == ("0", "0")
            if step == 1:   # every other attribute is as the LDIF wrote it
                for name, values in added.items():
                    if not name.startswith("sstProvisioning") and name != "objectClass":
                        assert entry[name] == values[0].decode(), name
            if step == 2:
                assert entry["sstQuota"] == str(2 * 1024 ** 3) and entry["sstBackupIntervalDaily"] == "14"
                assert "retain\tdaily\t14\n" in host.rsnapshot_config(UID).read_text()
            if step == 3:
                assert entry["sstIsActive"] == "FALSE"
                assert not host.rsnapshot_config(UID).exists() and not host.account_dir(UID).exists()
        _tool("provisioning.operator.ldifload", *load, str(data / f"04_remove_{UID}.ldif"))
        assert directory.get(dn) is None
        daemon.wait_for(r"uid=3724300,.*: removed after its delete request was done; nothing to do")
    finally:
        go.touch()
        assert daemon.stop() == 0
    assert [c[:4] for c in host.quota_calls()] == [["-u", UID, "1048576", "1048576"],
                                                   ["-u", UID, "2097152", "2097152"], ["-u", UID, "0", "0"]]


def test_the_loader_reads_the_password_from_the_configuration_not_argv(host, directory):
    ldif = host.layout.root / "one.ldif"
    ldif.write_text(f"dn: ou=loaded,{host.subtree}\nobjectClass: organizationalUnit\nou: loaded\n")
    result = _tool("provisioning.operator.ldifload", "-c", str(host.config), str(ldif))
    assert f"add ou=loaded,{host.subtree}: done" in result.stdout
    assert directory.conn.search_s(f"ou=loaded,{host.subtree}", 0)


def test_the_loader_reports_a_refused_record(host):
    ldif = host.layout.root / "bad.ldif"
    ldif.write_text(f"dn: ou=bad,{host.subtree}\nobjectClass: organizationalUnit\nou: bad\nnoSuchAttribute: x\n")
    result = subprocess.run([sys.executable, "-m", "provisioning.operator.ldifload", "-c", str(host.config), str(ldif)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert "bad.ldif" in result.stderr and "noSuchAttribute" in result.stderr

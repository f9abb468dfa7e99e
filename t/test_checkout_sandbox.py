"""The wiki's symlinked sandbox: a plugin in its own folder, run by a checkout that installs nothing.

Exactly the steps of docs/PLUGINS.md, "A plugin from its own folder", in a
temporary folder: a clone of this checkout's HEAD, a plugin scaffolded into a
folder of its own, its package folder symlinked into the clone's plugins/ and its etc/Provisioning/SERVICE
into the clone's etc/Provisioning/, the template copied to TYPE_test.conf with
only [Database] edited, and ``bin/provisioning-daemon -c
etc/Provisioning/SERVICE/TYPE_test.conf`` run from the clone until a request
is done. The interpreter has the dependencies only (not provisioning, not
the plugin), and no entry point names the plugin.
"""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from provisioning.testing import DaemonProcess, assert_done, database_keys, edit_ini

from plugin_env import PluginEnv

REPO = Path(__file__).resolve().parents[1]


class CheckoutDaemon(DaemonProcess):
    """``bin/provisioning-daemon -c CONFIG -d`` of a checkout, started in the checkout."""

    def command(self) -> list[str]:
        return [str(self.workdir / "bin/provisioning-daemon"), "-c", str(self.config), "-d"]


def _run(argv: list[str | Path], cwd: Path, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in argv], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


@pytest.fixture
def sandbox(tmp_path):
    """(clone, plugin folder, environment for bin/provisioning-daemon)."""
    found = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--verify", "HEAD"], capture_output=True,
                           text=True, timeout=60)
    assert found.returncode == 0, (f"this test clones the checkout's HEAD, as the README's steps do: {REPO} must "
                                   f"be a git clone with a commit (a copy of the files is not):\n{found.stderr}")
    head = found.stdout.strip()
    clone = tmp_path / "provisioning"
    subprocess.run(["git", "clone", "--quiet", "--no-checkout", str(REPO), str(clone)], check=True, timeout=120)
    subprocess.run(["git", "-C", str(clone), "checkout", "--quiet", "--detach", head], check=True, timeout=120)
    deps = PluginEnv(tmp_path / "deps", packages_only=True)
    env = {"PATH": os.environ["PATH"], "PYTHON": str(deps.python), "LDAPNOINIT": "1"}
    # The interpreter really has no provisioning of its own.
    assert deps.run("-c", "import provisioning", cwd=deps.root).returncode != 0
    assert deps.run("-c", "import ldap, pluggy, configobj, daemon", cwd=deps.root).returncode == 0
    return clone, tmp_path / "acme-widget", env


def test_a_plugin_in_its_own_folder_runs_from_a_checkout_through_symlinks(
        sandbox, provisioning_slapd, provisioning_subtree, provisioning_entries, tmp_path):
    clone, plugin, env = sandbox
    made = _run([clone / "bin/provisioning-daemon", "new-plugin", "Acme/Widget", plugin], tmp_path, env)
    assert made.returncode == 0, made.stderr
    # The two links of the wiki's sandbox.
    (clone / "plugins/provisioning_acme_widget").symlink_to(plugin / "provisioning_acme_widget")
    (clone / "etc/Provisioning/Acme").symlink_to(plugin / "etc/Provisioning/Acme")
    # Rsnapshot.conf.template -> Rsnapshot_test.conf in the wiki; only [Database] edited.
    state = tmp_path / "state"
    state.mkdir()
    config = Path("etc/Provisioning/Acme/Widget_test.conf")
    template = (clone / "etc/Provisioning/Acme/Widget.conf.template").read_text()
    (clone / config).write_text(edit_ini(template, {
        "Database": database_keys(provisioning_slapd, provisioning_subtree, state, "Acme-Widget")}))
    (clone / config).chmod(0o600)
    assert (plugin / "etc/Provisioning/Acme/Widget_test.conf").is_file()       # written through the link

    listed = _run([clone / "bin/provisioning-daemon", "--list-plugins"], clone, env)
    rows: dict[str, list[str]] = {}
    for line in listed.stdout.splitlines():
        rows.setdefault(line.split()[0], []).append(line)
    assert [row.split() for row in rows["Acme/Widget"]] == [[
        "Acme/Widget", "provisioning_acme_widget.plugin:AcmeWidget", "folder",
        str(clone / "plugins/provisioning_acme_widget"), "->", str(plugin / "provisioning_acme_widget")]]
    # The clone's own plugins come first; the copy installed in the test venv is named as not used.
    assert rows["Backup/Rsnapshot"][0].split()[2:4] == ["folder", str(clone / "plugins/backup_rsnapshot")]
    assert all("not used" in row for row in rows["Backup/Rsnapshot"][1:])

    checked = _run([clone / "bin/provisioning-daemon", "-c", config, "-t"], clone, env)
    assert f"OK   plugin: Acme/Widget loaded from provisioning_acme_widget.plugin:AcmeWidget (folder " \
           f"{clone / 'plugins/provisioning_acme_widget'} -> {plugin / 'provisioning_acme_widget'})" \
           in checked.stdout, checked.stdout + checked.stderr
    assert f"OK   configuration: {clone / config} is valid; Global.conf {clone / 'etc/Provisioning/Global.conf'}" \
           in checked.stdout

    daemon = CheckoutDaemon(config, None, clone, env=env)
    daemon.log_path = tmp_path / "daemon.log"          # not in the clone: it is checked for leftovers below
    daemon.start()
    try:
        dn = provisioning_entries.add("demo")
        assert_done(provisioning_entries.wait_mode(dn, "added"), "added")
        daemon.wait_for(rf"{dn}: add request claimed \(sstProvisioningMode: add -> adding\)")
        daemon.wait_for(rf"{dn}: Acme/Widget add got the entry \(LABEL Acme/Widget;")
    finally:
        assert daemon.stop() == 0, daemon.text()[-3000:]
    # Nothing was installed: the clone has no .venv and no egg-info, the plugin folder no build.
    assert not (clone / ".venv").exists() and not list(clone.glob("*.egg-info"))
    assert not list(plugin.glob("*.egg-info")) and not (plugin / "build").exists()

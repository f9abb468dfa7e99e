"""provisioning-daemon new-plugin and --list-plugins: a scaffolded plugin, pip-installed, does a request.

The plugin is installed into a fresh virtualenv (t/plugin_env.py) that sees
the test venv's packages; the test venv itself is never changed.
"""
from __future__ import annotations

import importlib.metadata
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from provisioning.hooks import loading as plugins
from provisioning.testing import DaemonProcess, assert_done

from plugin_env import PluginEnv

PLUGIN = "Acme/Widget"


def new_plugin(*args: str | Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "provisioning", "new-plugin", *map(str, args)],
                          capture_output=True, text=True, timeout=60)


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """A scaffolded Acme/Widget, pip-installed into a fresh virtualenv: (project folder, env)."""
    root = tmp_path_factory.mktemp("scaffold")
    made = new_plugin(PLUGIN, root / "acme-widget")
    assert made.returncode == 0, made.stderr
    env = PluginEnv(root / "venv")
    result = env.pip_install(root / "acme-widget")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return root / "acme-widget", env


def test_the_project_has_what_the_issue_lists(installed):
    project, _ = installed
    assert sorted(str(p.relative_to(project)) for p in project.rglob("*") if p.is_file()
                  and "egg-info" not in str(p) and "build" not in p.parts) == [
        ".gitignore", "README.md", "etc/Provisioning/Acme/Widget.conf.template", "provisioning_acme_widget/__init__.py",
        "provisioning_acme_widget/plugin.py", "pyproject.toml", "tests/test_acme_widget.py"]
    assert '"Acme/Widget" = "provisioning_acme_widget.plugin:AcmeWidget"' in (project / "pyproject.toml").read_text()


def test_pip_install_and_a_configuration_naming_it_are_all_it_takes(installed, provisioning_service,
                                                                     provisioning_entries):
    _, env = installed
    listed = env.run("-m", "provisioning", "--list-plugins")
    assert listed.returncode == 0
    assert [line.split() for line in listed.stdout.splitlines() if line.startswith(PLUGIN)] == [
        [PLUGIN, "provisioning_acme_widget.plugin:AcmeWidget", "distribution", "provisioning-acme-widget", "0.1.0"]]
    # A configuration with no [Widget] section: every key of the plugin has a default.
    files = provisioning_service(PLUGIN)
    assert "Widget" not in files.service
    daemon = DaemonProcess(files.config, files.global_config, files.root, python=env.python).start()
    try:
        dn = provisioning_entries.add("demo")
        assert_done(provisioning_entries.wait_mode(dn, "added"), "added")
        daemon.wait_for(rf"{dn}: add request claimed \(sstProvisioningMode: add -> adding\)")
        daemon.wait_for(rf"{dn}: add done in .* \(sstProvisioningMode: added,")
        daemon.wait_for(rf"{dn}: Acme/Widget add got the entry \(LABEL Acme/Widget; attributes: .*uid")
    finally:
        assert daemon.stop() == 0, daemon.text()[-2000:]


def _printed_steps(output: str) -> list[str]:
    """The commands new-plugin prints under "next:", without their comments."""
    block = output.split("next:\n", 1)[1].split("\nor without installing", 1)[0]
    return [line.split("  #", 1)[0].strip() for line in block.splitlines() if line.startswith("  ")]


def _operator_env() -> dict[str, str]:
    """An operator's shell: the system's PATH (where `pytest` would be another Python's), no virtualenv."""
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONHOME")}
    env["PATH"] = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    return env


def _debian_python() -> bool:
    import sysconfig
    return sys.prefix == sys.base_prefix and Path(sysconfig.get_path("stdlib"), "EXTERNALLY-MANAGED").is_file()


@pytest.mark.parametrize("route", ["virtualenv", "debian"])
def test_the_steps_new_plugin_prints_work_as_printed(route, tmp_path):
    """Its install is editable and its tests run, with the Python provisioning runs on (friction 5:
    `cd DIR && pytest` was another Python's, without provisioning)."""
    if route == "debian" and not _debian_python():
        pytest.skip("the route for Debian's python3 (PEP 668): it runs in bin/test's run on Debian's packages")
    python = PluginEnv(tmp_path / "env").python if route == "virtualenv" else Path(sys.executable)
    project = tmp_path / "acme-widget"
    made = subprocess.run([str(python), "-m", "provisioning", "new-plugin", PLUGIN, str(project)],
                          capture_output=True, text=True, timeout=60, env=_operator_env())
    assert made.returncode == 0, made.stderr
    steps = _printed_steps(made.stdout)
    assert any(" -m pip install -e " in step for step in steps), steps
    for step in steps:
        if step.startswith("cd "):
            folder, _, command = step.removeprefix("cd ").partition(" && ")
            argv = shlex.split(command) + ["-q", "-p", "no:cacheprovider", "--basetemp", str(tmp_path / "inner")]
            result = subprocess.run(argv, cwd=folder, capture_output=True, text=True, timeout=300,
                                    env=_operator_env())
            assert result.returncode == 0, f"{step}:\n{result.stdout[-3000:]}{result.stderr[-3000:]}"
            assert "2 passed" in result.stdout
        elif not step.startswith("cp ") and " -t" not in step:            # -t needs a [Database]
            result = subprocess.run(shlex.split(step), capture_output=True, text=True, timeout=300,
                                    env=_operator_env())
            assert result.returncode == 0, f"{step}:\n{result.stdout[-3000:]}{result.stderr[-3000:]}"
            if "--list-plugins" in step:
                assert f"{PLUGIN} " in result.stdout
    # Editable: the project folder is what runs, a change counts without installing again.
    installer = next(shlex.split(step)[0] for step in steps if " -m pip install -e " in step)
    shown = subprocess.run([installer, "-m", "pip", "show", "provisioning-acme-widget"], capture_output=True,
                           text=True, timeout=120, env=_operator_env())
    assert f"Editable project location: {project}" in shown.stdout, shown.stdout + shown.stderr


def test_the_test_venv_is_left_clean(installed):
    # The plugin went into the fresh environment only.
    assert PLUGIN not in {ep.name for ep in importlib.metadata.entry_points(group=plugins.ENTRY_POINT_GROUP)}
    with pytest.raises(importlib.metadata.PackageNotFoundError):
        importlib.metadata.distribution("provisioning-acme-widget")


def test_list_plugins_shows_the_built_in_plugins_and_where_they_come_from():
    result = subprocess.run([sys.executable, "-m", "provisioning", "--list-plugins"], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0 and result.stderr == ""
    rows = {line.split()[0]: line for line in result.stdout.splitlines()}
    checkout = Path(__file__).resolve().parents[1]
    # This checkout is installed editable: its folders, and the installation that points at them.
    assert rows["Backup/Rsnapshot"].split()[1:4] == ["provisioning_backup_rsnapshot.plugin:BackupRsnapshot",
                                                    "folder", str(checkout / "plugins/backup_rsnapshot")]
    assert rows["Generic/Exec"].split()[1:4] == ["provisioning_generic_exec.plugin:GenericExec", "folder",
                                                str(checkout / "plugins/generic_exec")]
    assert "(also installed: provisioning 0.1.0)" in rows["Generic/Exec"]


def test_a_folder_declares_its_plugin_without_being_run(tmp_path):
    good, bad, shared = tmp_path / "good", tmp_path / "bad", tmp_path / "shared"
    for folder in (good, bad, shared):
        folder.mkdir()
    canary = tmp_path / "ran"
    (good / "__init__.py").write_text(f'open({str(canary)!r}, "w")\n'
                                      'PROVISIONING_ENTRY_POINT = "Acme/Widget = acme_widget.plugin:AcmeWidget"\n')
    (bad / "__init__.py").write_text('PROVISIONING_ENTRY_POINT = "Acme Widget = x"\n')
    (shared / "__init__.py").write_text("HELPER = 1\n")
    found, problems = plugins.in_folders(tmp_path)
    assert [(f.name, f.value, f.folder) for f in found] == [("Acme/Widget", "acme_widget.plugin:AcmeWidget", good)]
    assert problems == [f"{bad / '__init__.py'}: PROVISIONING_ENTRY_POINT: 'Acme Widget = x' is not "
                        f'"SERVICE/TYPE = module:object"']
    assert not canary.exists()


def test_new_plugin_refuses_a_folder_that_is_not_empty_or_a_link(tmp_path):
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "mine.txt").write_text("keep me")
    result = new_plugin(PLUGIN, taken)
    assert result.returncode == 2 and "is not empty: refusing to write into it" in result.stderr
    assert os.listdir(taken) == ["mine.txt"] and (taken / "mine.txt").read_text() == "keep me"
    empty = tmp_path / "empty"
    empty.mkdir()
    link = tmp_path / "link"
    link.symlink_to(empty)
    result = new_plugin(PLUGIN, link)
    assert result.returncode == 2 and "is a symbolic link" in result.stderr and os.listdir(empty) == []
    assert new_plugin(PLUGIN, empty).returncode == 0 and (empty / "pyproject.toml").is_file()
    for bad in ("Acme", "Acme/", "1Acme/Widget", "Acme/Wid-get", "Acme/Widget/x", "Acme/Gateway"):
        result = new_plugin(bad, tmp_path / "new")
        assert result.returncode == 2 and not (tmp_path / "new").exists(), bad


def test_a_checkout_folder_cannot_hide_a_module_the_daemon_uses(tmp_path, monkeypatch):
    for name, line in (("stdlib", "Evil/Stdlib = tabnanny.plugin:X"), ("loaded", "Evil/Loaded = ldap.plugin:X")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "__init__.py").write_text(f"PROVISIONING_ENTRY_POINT = {line!r}\n")
    monkeypatch.setattr(plugins, "checkout_plugins_folder", lambda: tmp_path)
    with pytest.raises(plugins.PluginError, match="tabnanny .* is a module of Python's standard library"):
        plugins.load("Evil", "Stdlib")
    with pytest.raises(plugins.PluginError, match="package ldap is already imported from"):
        plugins.load("Evil", "Loaded")
    import ldap
    import tabnanny
    assert Path(tabnanny.__file__).parent != tmp_path / "stdlib" and Path(ldap.__file__).parent != tmp_path / "loaded"

"""Transport.call: a function of shipped modules, run where the files are (LocalCLI and CLISSH)."""
from __future__ import annotations

import errno
import importlib.util
import os
import sys
import textwrap

import pytest

from provisioning.transport import CLISSH, DryRun, LocalCLI

FIRST = '''
import os
LOADED_AT = os.urandom(8).hex()        # once per process that loads this source
'''
SECOND = '''
import errno, os
try:
    from callpkg_first import LOADED_AT
except ImportError:
    from first import LOADED_AT


def where(value):
    return {"pid": os.getpid(), "echo": value, "loaded": LOADED_AT}


def refuse(path):
    raise FileNotFoundError(errno.ENOENT, "no such thing here", path)


def break_down():
    raise ValueError("not an OSError")
'''


@pytest.fixture(scope="module")
def modules(tmp_path_factory):
    """Two modules, the second importing the first (by its package name here, by its last name there)."""
    folder = tmp_path_factory.mktemp("callee")
    loaded = []
    for name, source in (("callpkg_first", FIRST), ("callpkg_second", SECOND)):
        path = folder / f"{name.split('_')[1]}.py"
        path.write_text(textwrap.dedent(source))
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
        module.__name__ = f"callpkg.{path.stem}"            # the helper knows it by its last part
        loaded.append(module)
    return loaded


@pytest.fixture(params=["LocalCLI", "CLISSH"])
def transport(request):
    if request.param == "LocalCLI":
        made = LocalCLI(timeout=30)
    else:
        sshd = request.getfixturevalue("sshd")
        made = CLISSH(host=sshd["HOST"], user=sshd["USER"], key_file=sshd["DSA_FILE"], port=sshd["PORT"],
                      known_hosts=sshd["KNOWN_HOSTS"], timeout=30)
    yield made
    made.close()


def test_the_function_runs_where_the_transport_works_and_its_result_comes_back(transport, modules):
    first = transport.call(modules, "where", {"a": [1, "two"]})
    assert first["echo"] == {"a": [1, "two"]}
    assert (first["pid"] == os.getpid()) is isinstance(transport, LocalCLI)
    # The sources went to the helper once: the second call finds the modules loaded.
    assert transport.call(modules, "where", 2)["loaded"] == first["loaded"]
    if isinstance(transport, CLISSH):
        (helper,) = transport.helpers.waiting()
        assert helper.loaded == {"first", "second"}


def test_an_oserror_there_is_an_oserror_here_and_anything_else_becomes_one(transport, modules):
    with pytest.raises(FileNotFoundError) as raised:
        transport.call(modules, "refuse", "/nowhere")
    assert raised.value.errno == errno.ENOENT and "/nowhere" in str(raised.value)
    if isinstance(transport, CLISSH):
        with pytest.raises(OSError, match="second.break_down raised ValueError: not an OSError"):
            transport.call(modules, "break_down")
        assert transport.call(modules, "where", 3)["echo"] == 3         # the helper still answers


def test_a_dry_run_says_what_it_would_call_and_calls_nothing(modules, capsys):
    calls = []
    modules[1].where, real = (lambda value: calls.append(value)), modules[1].where
    try:
        assert DryRun(LocalCLI()).call(modules, "where", 1, shown="the builder for 3723707") is None
    finally:
        modules[1].where = real
    assert calls == [] and "DRY-RUN: would call the builder for 3723707" in capsys.readouterr().out

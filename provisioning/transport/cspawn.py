"""posix_spawn called through ctypes, so that the daemon's other threads run while a command starts.

os.posix_spawn holds the GIL for the whole call, and glibc's posix_spawn
suspends its caller until the child has exec'd (CLONE_VFORK): 0.3 ms for a
small script on an idle machine, several ms on a loaded one. Every other
thread of the daemon (the main loop, the other workers) waited that long for
every command: in a burst of adds, 71 % of the samples py-spy took of the
thread holding the GIL were inside os.posix_spawn. A foreign call through
ctypes.CDLL releases the GIL, and glibc does exactly the same work.

Only what spawn.Child asks for is offered: dup2 and open file actions, a new
session (POSIX_SPAWN_SETSID, glibc 2.26 and later) and signals set back to
their default. Where libc lacks any of it (not glibc), ``spawn`` is
os.posix_spawn itself.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import threading
from typing import Callable, Mapping, Sequence

# <spawn.h> of glibc.
POSIX_SPAWN_SETSIGDEF = 0x04
POSIX_SPAWN_SETSID = 0x80
# Room for glibc's opaque types (posix_spawn_file_actions_t is 80 bytes on
# x86_64 and aarch64, posix_spawnattr_t 336, sigset_t 128): generously more.
_FILE_ACTIONS_SIZE = 512
_ATTR_SIZE = 1024
_SIGSET_SIZE = 256


def _libc() -> ctypes.CDLL | None:
    """glibc's functions with their signatures, or None where they are missing (another libc)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        if not hasattr(libc, "gnu_get_libc_version"):
            return None                        # the flag values above are glibc's
        p, i, s, u = ctypes.c_void_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint
        signatures = {
            "posix_spawn": [ctypes.POINTER(ctypes.c_int), s, p, p, p, p],
            "posix_spawn_file_actions_init": [p], "posix_spawn_file_actions_destroy": [p],
            "posix_spawn_file_actions_adddup2": [p, i, i],
            "posix_spawn_file_actions_addopen": [p, i, s, i, u],
            "posix_spawnattr_init": [p], "posix_spawnattr_destroy": [p],
            "posix_spawnattr_setflags": [p, ctypes.c_short],
            "posix_spawnattr_setsigdefault": [p, p],
            "sigemptyset": [p], "sigaddset": [p, i],
        }
        for name, argtypes in signatures.items():
            function = getattr(libc, name)
            function.argtypes, function.restype = argtypes, ctypes.c_int
        return libc
    except (OSError, AttributeError):
        return None


_LIBC = _libc()


def _check(code: int, what: str) -> None:
    if code != 0:
        raise OSError(code, f"{what}: {os.strerror(code)}")


def _c(value: str | bytes) -> bytes:
    """``value`` for a char *: refused, as by os.posix_spawn, if a NUL would cut it short."""
    raw = os.fsencode(value)
    if b"\0" in raw:
        raise ValueError("embedded null byte")
    return raw


def _strings(values: Sequence[bytes]) -> ctypes.Array:
    """A NULL-terminated char *[] of ``values``."""
    return (ctypes.c_char_p * (len(values) + 1))(*values, None)


# "NAME=value" as passed, per (name, value) as given: every command gets the daemon's
# environment (about 40 variables, the same each time), and checking and joining them anew
# was a twentieth of the CPU of starting one. Bounded: the command's own marker is new each time.
_PAIRS: dict[tuple, bytes] = {}
_PAIRS_KEPT = 512


def _environment(env: Mapping) -> ctypes.Array:
    pairs = []
    for item in env.items():
        joined = _PAIRS.get(item)
        if joined is None:
            joined = _pair(*item)
            if len(_PAIRS) >= _PAIRS_KEPT:
                _PAIRS.clear()
            _PAIRS[item] = joined
        pairs.append(joined)
    return _strings(pairs)


def _pair(key: str | bytes, value: str | bytes) -> bytes:
    name = _c(key)
    if not name or b"=" in name:
        raise ValueError("illegal environment variable name")
    return name + b"=" + _c(value)


def _file_actions(actions: Sequence[tuple]) -> ctypes.Array:
    fa = ctypes.create_string_buffer(_FILE_ACTIONS_SIZE)
    _check(_LIBC.posix_spawn_file_actions_init(fa), "posix_spawn_file_actions_init")
    try:
        for action in actions:
            if action[0] == os.POSIX_SPAWN_DUP2:
                _check(_LIBC.posix_spawn_file_actions_adddup2(fa, action[1], action[2]), "adddup2")
            elif action[0] == os.POSIX_SPAWN_OPEN:
                _, fd, path, flags, mode = action
                _check(_LIBC.posix_spawn_file_actions_addopen(fa, fd, _c(path), flags, mode), "addopen")
            else:
                raise ValueError(f"file action {action!r} is not offered here")
    except BaseException:
        _LIBC.posix_spawn_file_actions_destroy(fa)
        raise
    return fa


# Made once per (setsid, signals): posix_spawn only reads them, and every command of the daemon
# asks for the same (a tenth of the CPU of starting one was making them again).
_made_attributes: dict[tuple[bool, tuple[int, ...]], ctypes.Array] = {}
_made_lock = threading.Lock()


def _attributes_for(setsid: bool, setsigdef: Sequence[int]) -> ctypes.Array:
    key = (bool(setsid), tuple(int(number) for number in setsigdef))
    with _made_lock:
        attr = _made_attributes.get(key)
        if attr is None:
            attr = _made_attributes[key] = _attributes(*key)
        return attr


def _attributes(setsid: bool, setsigdef: Sequence[int]) -> ctypes.Array:
    attr = ctypes.create_string_buffer(_ATTR_SIZE)
    _check(_LIBC.posix_spawnattr_init(attr), "posix_spawnattr_init")
    try:
        flags = (POSIX_SPAWN_SETSID if setsid else 0) | (POSIX_SPAWN_SETSIGDEF if setsigdef else 0)
        if setsigdef:
            signals = ctypes.create_string_buffer(_SIGSET_SIZE)
            _check(_LIBC.sigemptyset(signals), "sigemptyset")
            for number in setsigdef:
                _check(_LIBC.sigaddset(signals, int(number)), "sigaddset")
            _check(_LIBC.posix_spawnattr_setsigdefault(attr, signals), "setsigdefault")
        _check(_LIBC.posix_spawnattr_setflags(attr, flags), "setflags")
    except BaseException:
        _LIBC.posix_spawnattr_destroy(attr)
        raise
    return attr


def _spawn_released(path: str | bytes, argv: Sequence[str | bytes], env: Mapping, *,
                    setsid: bool = False, setsigdef: Sequence[int] = (),
                    file_actions: Sequence[tuple] = ()) -> int:
    """os.posix_spawn's meaning for these arguments, with the GIL released during the call; the pid."""
    args = _strings([_c(a) for a in argv])
    environment = _environment(env)
    program = _c(path)
    attr = _attributes_for(setsid, setsigdef)
    fa = _file_actions(file_actions)
    try:
        pid = ctypes.c_int()
        code = _LIBC.posix_spawn(ctypes.byref(pid), program, fa, attr, args, environment)
    finally:
        _LIBC.posix_spawn_file_actions_destroy(fa)
    if code != 0:
        raise OSError(code, os.strerror(code), path)
    return pid.value


spawn: Callable[..., int] = _spawn_released if _LIBC is not None else os.posix_spawn

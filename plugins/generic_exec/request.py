"""What the command gets: the request as JSON on stdin, and its environment.

Nothing from the entry goes on a command line. The environment is built
here, whole, not inherited from the daemon: PATH and LANG fixed,
PROVISIONING_VERB, and PROVISIONING_DN in a form that is safe in an
environment (see dn_for_environment).
"""
from __future__ import annotations

import json
import unicodedata

from provisioning.base.entry import Entry

# The command's PATH: the usual system folders, nothing from the daemon's environment.
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
LANG = "C.UTF-8"
# Characters written as hex escapes in PROVISIONING_DN: control characters,
# invisible format characters (bidi overrides), lone surrogates, line and
# paragraph separators (the same the log escapes).
_UNSAFE_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})


def stdin_json(verb: str, entry: Entry) -> bytes:
    """``{"verb": ..., "dn": ..., "attributes": {name: [value, ...]}}`` as one ASCII line, newline-terminated.

    The DN and the values are exact (JSON escapes what needs it), so the
    command can read the entry on a single line whatever it holds.
    """
    document = {"verb": verb, "dn": entry.dn, "attributes": entry.as_values()}
    return json.dumps(document, ensure_ascii=True, sort_keys=False).encode("ascii") + b"\n"


def dn_for_environment(dn: str) -> str:
    """The DN with every control or invisible character as an RFC 4514 hex escape (``\\0A`` for a newline).

    The result names the very same entry (RFC 4514 allows any character of a
    value to be written as the hex pairs of its UTF-8 bytes), and is one
    line of printable text: a script that writes ``$PROVISIONING_DN`` to a log
    or passes it to ``ldapsearch`` cannot be made to start a line or send an
    escape sequence. DNs without such characters (nearly all) are unchanged.
    """
    out = []
    for char in dn:
        if unicodedata.category(char) in _UNSAFE_CATEGORIES:
            out.append("".join(f"\\{byte:02X}" for byte in char.encode("utf-8", "surrogatepass")))
        else:
            out.append(char)
    return "".join(out)


def environment(verb: str, dn: str) -> dict[str, str]:
    """The command's whole environment, but for PROVISIONING_GUARD, which LocalCLI adds (see commandguard)."""
    return {"PATH": PATH, "LANG": LANG, "PROVISIONING_VERB": verb, "PROVISIONING_DN": dn_for_environment(dn)}

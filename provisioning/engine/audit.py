"""The core of an audit: the directory read once, each entry sorted, the plugin's comparison asked for.

Used by ``provisioning-daemon audit``, ``explain``, ``retire`` and the
daemon's own audit (AUDIT_INTERVAL). The directory is read in one search of
SERVICE_SUBTREE with SEARCH_FILTER, streamed: an entry at a time goes to the
plugin's ``provisioning_audit``, which reads the host once. Each entry is

- another host's (``provisioning_owns``): counted, with its ``host`` and
  ENVIRONMENT, and not given to the plugin: what this host holds for it is
  an orphan here;
- this host's, with what it expects (provisioning.base.finding.Expect):
  present (its last request done, or MODUS LDAP), absent (its delete was
  done), or open (a request open, in hand or failed: the daemon's to
  finish, so not judged).

An answer that is not whole (a size limit, a referral, a missing subtree,
a lost connection) is no audit: nothing is reported as an orphan because
the directory did not say the whole (rule 4, never act on a guess).
"""
from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Iterable, Iterator

import ldap.dn
from ldap.filter import escape_filter_chars

from provisioning.backend.cookie import DEFAULT_CSN
from provisioning.backend.dn import normal_dn, rdns
from provisioning.backend.ldap import Directory
from provisioning.base.entry import Entry
from provisioning.base.finding import Audit, Expect, Expected, Finding
from provisioning.engine.protocol import MODE, STATE, is_selfcare
from provisioning.hooks.service import Service

log = logging.getLogger(__name__)

# Entries of other hosts named in the report (all are counted).
OTHERS_SHOWN = 20


class Incomplete(Exception):
    """The directory's answer was not read to its end: no audit can be made of it."""


@dataclass
class Census:
    """How the directory's entries were sorted."""

    expected: Counter = field(default_factory=Counter)     # Expect -> entries of this host
    others: int = 0                                        # entries of other hosts
    shown: list[tuple[str, str]] = field(default_factory=list)   # (DN, why not this host's), the first few

    @property
    def ours(self) -> int:
        return sum(self.expected.values())


@dataclass
class Report:
    """An audit: the plugin's answer and how the directory's entries were sorted."""

    audit: Audit
    census: Census
    plugin: str = ""

    @property
    def findings(self) -> list[Finding]:
        return self.audit.findings

    def by_kind(self) -> Counter:
        """How many findings of each kind (the drift the metrics and the mail digest count)."""
        return Counter(finding.kind for finding in self.findings)

    @property
    def repairable(self) -> list[Finding]:
        return [f for f in self.findings if f.repairable]


def expectation(entry: Entry, modus: str) -> Expect:
    """What ``entry`` (this host's) says should be on the host now."""
    selfcare = modus == "selfcare" or (modus == "combined" and is_selfcare(entry))
    if not selfcare:
        return Expect.PRESENT                    # MODUS LDAP: an entry that exists is an account
    state, mode = (entry.get(STATE) or "").strip(), (entry.get(MODE) or "").strip().lower()
    if not state or state == "0" or not mode:
        return Expect.OPEN                       # a request open, in hand, failed or refused
    return Expect.ABSENT if mode == "deleted" else Expect.PRESENT


def search_filter(template: str, only: str | None) -> str:
    """SEARCH_FILTER as the stream uses it, narrowed to the entries that bear ``only``'s name.

    ``only`` is a DN (its first RDN names the entries: ``uid=3723707,...``
    finds every entry with uid 3723707, wherever it lies) or a bare name,
    taken for a uid (the name the accounts of the stoney directory have).
    """
    base = template.replace("%entryCSN%", DEFAULT_CSN)
    if only is None:
        return base
    kind, value = name_of(only)
    return f"(&{base}({escape_filter_chars(kind)}={escape_filter_chars(value)}))"


def name_of(only: str) -> tuple[str, str]:
    """(attribute, value) an operator's name stands for: a DN's first RDN, or ("uid", name)."""
    if "=" not in only:
        return "uid", only.strip()
    parts = rdns(only)
    if not parts or len(parts[0]) != 1:
        raise ValueError(f"{only!r} is neither a DN with one name in its first RDN nor a uid")
    rdn = ldap.dn.str2dn(only)[0][0]           # as written: rdns() lowered the value
    return rdn[0], rdn[1]


def run(directory: Directory, base: str, filter_template: str, service: Service, modus: str,
        only: str | None = None) -> Report:
    """Read the directory (once) and let the plugin compare; Incomplete when the answer was cut.

    Raises what the directory raises (DirectoryUnavailable, DirectoryError,
    SubtreeMissing) and Incomplete when the plugin did not read the
    entries to their end.
    """
    census = Census()
    stream = _Whole(directory.each(base, search_filter(filter_template, only)))
    audit = service.audit(_sorted(stream, base, service, modus, census), only)
    if audit.cannot is None and not stream.whole:
        raise Incomplete("the plugin's audit did not read every entry of the directory's answer")
    return Report(audit, census)


def _sorted(entries: Iterable[Entry], base: str, service: Service, modus: str,
            census: Census) -> Iterator[Expected]:
    """This host's entries with what each expects; the others counted."""
    top = normal_dn(base)
    for entry in entries:
        if normal_dn(entry.dn) == top:
            continue                              # SERVICE_SUBTREE itself is no account
        why = service.not_ours(entry)
        if why is not None:
            census.others += 1
            if len(census.shown) < OTHERS_SHOWN:
                census.shown.append((entry.dn, why))
            continue
        expect = expectation(entry, modus)
        census.expected[expect] += 1
        yield Expected(entry, expect)


class _Whole:
    """An iterator that knows whether it was read to its end."""

    def __init__(self, inner: Iterator[Entry]) -> None:
        self.inner = inner
        self.whole = False

    def __iter__(self) -> "_Whole":
        return self

    def __next__(self) -> Entry:
        try:
            return next(self.inner)
        except StopIteration:
            self.whole = True
            raise

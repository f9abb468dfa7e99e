"""What an audit compares and what it finds: the types of the ``provisioning_audit`` hook.

The core reads the directory once and hands the plugin every entry of this
host with what it expects of it (:class:`Expected`); the plugin compares that
with what is on the host, in one pass, and answers with an :class:`Audit`:
one :class:`Finding` per thing that differs, whether each is safe to repair,
and for an orphan (something on the host no entry explains) the name
``provisioning-daemon retire`` takes.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass, field

from provisioning.base.entry import Entry


class Expect(str, enum.Enum):
    """What an entry of this host says should be on the host."""

    PRESENT = "present"     # provisioned (its last request done, or MODUS LDAP): there, as the entry says
    ABSENT = "absent"       # its delete request was done: nothing of it should be left
    OPEN = "open"           # a request is open, in hand or failed: the daemon's to finish; not judged


@dataclass(frozen=True)
class Expected:
    """One entry of this host and what it expects."""

    entry: Entry
    expect: Expect


@dataclass(frozen=True)
class Finding:
    """One thing on the host that differs from the directory.

    ``kind`` is a short word (``config-differs``, ``orphan-home``...), the
    same for every finding of that kind: drift is counted by it. ``subject``
    is the entry's DN, or the path of an object no entry explains.
    ``detail`` says what differs, in plain words. ``repairable``: the
    plugin's repair hook can fix it safely, with the daemon's own steps.
    ``uuid`` is the entry's entryUUID (for an orphan: what its owner marker
    names, if anything); ``name`` what ``retire`` takes for an orphan, and
    ``entry`` the entry its delete hook would be called with as the host
    shows it (None: nothing shows whose it is, so it cannot be retired).
    """

    kind: str
    subject: str
    detail: str
    repairable: bool = False
    uuid: str | None = None
    name: str | None = None
    entry: Entry | None = field(default=None, compare=False, repr=False)

    @property
    def orphan(self) -> bool:
        """Something on the host that no entry of this host explains (``retire`` takes ``name``)."""
        return self.name is not None


@dataclass
class Audit:
    """A plugin's answer to ``provisioning_audit``.

    ``checked``: how many entries it compared; ``notes``: what it could not
    check and why (``"quota not checked: ..."``), each a sentence; ``cannot``:
    why the plugin cannot audit at all (None when it can).
    """

    findings: list[Finding] = field(default_factory=list)
    checked: int = 0
    notes: list[str] = field(default_factory=list)
    cannot: str | None = None

    @classmethod
    def impossible(cls, why: str) -> "Audit":
        """The answer of a plugin that cannot audit what it made (``why`` says so)."""
        return cls(cannot=why)

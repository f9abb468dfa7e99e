"""A directory entry as the core and the plugins see it: text values, any-case names."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence



class Attributes(dict):
    """{name: [values]} whose names compare without case (entryCSN, entrycsn, ENTRYCSN).

    A dict keyed by the lower-case name, remembering the spelling it was
    given; faster than python-ldap's Attributes, which the daemon used to build
    for every entry it saw. Iterating gives the names as spelled.
    """

    def __init__(self, items: Mapping[str, Sequence[str]] | None = None) -> None:
        super().__init__()
        self._names: dict[str, str] = {}
        for name, values in (items or {}).items():
            self[name] = values

    def __setitem__(self, name: str, values: list[str]) -> None:
        key = name.lower()
        self._names[key] = name
        super().__setitem__(key, values)

    @classmethod
    def decoded(cls, raw: Mapping[str, Sequence[bytes]]) -> "Attributes":
        """From python-ldap's ``{name: [bytes, ...]}``; three entries per request pass here."""
        attrs = cls()
        # Directory strings are UTF-8 by definition; anything else is not
        # ours to interpret, so it must not crash the daemon either.
        attrs._names = {name.lower(): name for name in raw}
        dict.update(attrs, {name.lower(): [v.decode("utf-8", "replace") for v in values]
                            for name, values in raw.items()})
        return attrs

    def __getitem__(self, name: str) -> list[str]:
        return super().__getitem__(name.lower())

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and super().__contains__(name.lower())

    def get(self, name: str, default=None):
        return super().get(name.lower(), default)

    def pop(self, name: str, *default):
        self._names.pop(name.lower(), None)
        return super().pop(name.lower(), *default)

    def __iter__(self):
        return iter(self._names.values())

    def keys(self):
        return list(self._names.values())

    def items(self):
        return [(self._names[key], values) for key, values in super().items()]


@dataclass
class Entry:
    """One LDAP entry. Attribute names are case-insensitive, values are str."""

    dn: str
    attrs: Attributes = field(default_factory=Attributes)
    uuid: str | None = None

    @classmethod
    def from_ldap(cls, dn: str, raw: Mapping[str, Sequence[bytes]],
                  uuid: str | None = None) -> "Entry":
        """Build from python-ldap's ``{name: [bytes, ...]}``."""
        attrs = Attributes.decoded(raw)
        uuid = uuid or _first(attrs, "entryUUID")
        return cls(dn, attrs, uuid.lower() if uuid else None)

    @classmethod
    def from_values(cls, dn: str, values: Mapping[str, Sequence[str]], uuid: str | None = None) -> "Entry":
        """Build from ``{name: [str, ...]}`` (as kept in the local store)."""
        return cls(dn, Attributes({name: list(v) for name, v in values.items()}), uuid)

    def with_changes(self, changes: Mapping[str, Sequence[str] | None], csn: str | None = None) -> "Entry":
        """This entry as it is after replacing ``changes`` (None removes), with entryCSN ``csn``."""
        attrs = Attributes({name: list(v) for name, v in self.attrs.items()})
        for name, values in changes.items():
            if values is None:
                attrs.pop(name, None)
            else:
                attrs[name] = list(values)
        if csn:
            attrs["entryCSN"] = [csn]
        return Entry(self.dn, attrs, self.uuid)

    def as_values(self) -> dict[str, list[str]]:
        """``{name: [str, ...]}`` with the names as the server spelled them."""
        return {name: list(values) for name, values in self.attrs.items()}

    def get(self, name: str, default: str | None = None) -> str | None:
        """The first value of ``name``, or ``default`` when it is absent."""
        return _first(self.attrs, name, default)

    def values(self, name: str) -> list[str]:
        """All values of ``name`` (an empty list when absent)."""
        return list(self.attrs.get(name, []))

    @property
    def csn(self) -> str | None:
        """entryCSN: identifies the last change made to the entry."""
        return self.get("entryCSN")

    @property
    def key(self) -> str:
        """What the daemon keeps an entry under (its lane of jobs, its lock on the host, its claim in
        hand): the entryUUID, the DN in lower case where there is none."""
        return self.uuid or self.dn.lower()


def _first(attrs: Mapping[str, list[str]], name: str, default: str | None = None) -> str | None:
    values = attrs.get(name)
    return values[0] if values else default

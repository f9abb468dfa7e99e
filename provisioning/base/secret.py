"""Secret: a configuration value (a password) that shows as ``********`` wherever it goes.

Secrets are kept out of logs structurally, not by search and replace: the
value is wrapped once, when the configuration is validated, and every way of
turning it into text (str, repr, format, %-formatting, a log record, an
exception message, a configuration dump, an argv list) gives ``********``.
The value itself is taken only where it is used, with ``reveal()``. It is not
a str on purpose: ``"..." + secret`` and ``"".join([secret])`` raise instead
of leaking, so a forgotten ``reveal()`` is a loud bug, not a quiet leak.
"""
from __future__ import annotations

import hmac

MASK = "********"


class Secret:
    """A value that never shows; ``reveal()`` gives it to the one place that needs it."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        if isinstance(value, Secret):
            value = value.reveal()
        self._value = str(value)

    def reveal(self) -> str:
        """The real value. Call it only where the value is handed to its consumer."""
        return self._value

    def __str__(self) -> str:
        return MASK

    def __repr__(self) -> str:
        return f"Secret({MASK!r})"

    def __format__(self, spec: str) -> str:
        return format(MASK, spec)

    def __bool__(self) -> bool:
        """True when a value is set (an empty password means "none")."""
        return bool(self._value)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Secret):
            return NotImplemented
        return hmac.compare_digest(self._value.encode(), other._value.encode())

    # Not a dict key: there is no reason to keep a hash of a password around.
    __hash__ = None  # type: ignore[assignment]

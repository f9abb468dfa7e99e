"""What the observers read of the daemon's loop: a view it hands them, so they never import the engine.

engine.daemon.Daemon provides it (Monitor.attach); the metrics server reads it
from its own thread when scraped, so everything here only reads.
"""
from __future__ import annotations

from typing import Protocol

from provisioning.transport.base import Reach


class LoopView(Protocol):
    """The loop as the monitor, the metrics and systemd's STATUS= see it."""

    @property
    def waiting(self) -> int:
        """Events queued or in hand, not yet finished."""

    @property
    def in_refresh(self) -> bool:
        """Whether a refresh (the first synchronisation after a connect) is under way."""

    @property
    def acknowledged(self) -> str | None:
        """The cookie acknowledged last (None: none yet)."""

    @property
    def held_removals(self) -> int:
        """How many removals the deletion brake holds for an operator."""

    def reach(self) -> Reach | None:
        """The gateway's state with TRANSPORTAPI = CLISSH; None for this host."""

    def gauges(self) -> dict[str, tuple[float, str]]:
        """The plugin's own gauges (hook provisioning_metrics)."""


class Outcome(Protocol):
    """What the monitor reads of a job's result."""

    code: int | None          # the return value (None: no request was answered)
    verb: str | None
    took: float | None        # seconds from the claim to the outcome

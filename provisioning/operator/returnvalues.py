"""What a sstProvisioningReturnValue means: the core's values and the plugin's."""
from __future__ import annotations

import logging

import pluggy

from provisioning.base.codes import MEANINGS

log = logging.getLogger(__name__)


def meanings(manager: pluggy.PluginManager | None) -> dict[int, str]:
    """``{value: meaning}``: the core's own (0, 1, 100 and up), then those the plugin names."""
    found = {int(code): text for code, text in MEANINGS.items()}
    if manager is None:
        return found
    try:
        answers = manager.hook.provisioning_return_values()
    except Exception:  # noqa: BLE001 - a broken hook costs the meanings, not the command
        log.exception("the plugin failed to name its return values")
        return found
    for answer in answers:
        for code, text in (answer or {}).items():
            found.setdefault(int(code), str(text))
    return found


def describe(value: str | int | None, known: dict[int, str]) -> str:
    """The meaning of ``value`` as text, also for a value nobody names."""
    try:
        code = int(str(value).strip())
    except ValueError:
        return f"{value!r} is not a number"
    return known.get(code, "not a value the core or the plugin names")

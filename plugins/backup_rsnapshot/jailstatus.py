"""What ``status`` says of the jails: the jail job's figures (jailjob.py), read from its status file.

The job writes BACKUP_ROOT/.jail-images/status.json after each bucket it
looked at and after each pass; status reads it through the transport (on the
gateway with CLISSH) and changes nothing. A jail stale for more than a day
(on an old image, or with copied programs) makes status WARNING.
"""
from __future__ import annotations

import json
import time

from provisioning.transport import Transport

from provisioning_backup_rsnapshot.jailjob import STALE_WARNING_SECONDS, status_path

READ_LIMIT = 1 << 16


def read(transport: Transport, backup_root: str) -> dict | None:
    """The job's last figures; None when it never wrote any (or they cannot be read)."""
    try:
        return json.loads(transport.read_small(status_path(backup_root), READ_LIMIT))
    except (OSError, ValueError):
        return None


def details(figures: dict | None, now: float | None = None) -> dict[str, str]:
    """status lines: the jails by state, and the images (none before the job made an image: a
    host whose jails hold no programs has nothing to say here)."""
    if figures is None:
        return {}
    now = time.time() if now is None else now
    stale = figures["stale"]
    since = f" since {_utc(figures['stale_since'])}" if stale and figures.get("stale_since") else ""
    images = ", ".join(f"{store['content'][:12]} since {_utc(store['since'])}"
                       for store in figures["stores"].values() if store.get("content"))
    return {"jails": f"{figures['jails']} with programs: {figures['current']} on the current image, "
                     f"{stale} on an old one or with copied programs{since}; {figures['left_alone']} left alone "
                     f"(owner marker not this daemon's), {figures['refused']} refused; "
                     f"{figures['without_programs']} without programs",
            "jail image": f"{images or 'none yet'} ({' '.join(figures['programs'])}; "
                          f"figures of {_utc(figures['written'])})"}


def warnings(figures: dict | None, now: float | None = None) -> list[str]:
    """A warning when a jail has been stale for more than a day."""
    if figures is None or not figures["stale"] or not figures.get("stale_since"):
        return []
    now = time.time() if now is None else now
    if now - figures["stale_since"] <= STALE_WARNING_SECONDS:
        return []
    return [f"{figures['stale']} jail(s) on an old jail image or with copied programs since "
            f"{_utc(figures['stale_since'])} (more than a day)"]


def _utc(seconds: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(seconds))

"""The daemon (python -m provisioning ARGS) with a fault between two renames of a jail's move.

t/test_jail_job.py runs this file instead of ``-m provisioning``. At the
first rename of a move after $JAIL_FAULT_ARMED exists, it writes the jail and
the file to $JAIL_FAULT_REACHED and stops there (the store's lock held) until
the test kills the daemon with SIGKILL: a crash between two renames, placed
on purpose. relink.between_renames is the hook; nothing in the daemon sets it.
"""
from __future__ import annotations

import os
import runpy
import sys
import time
from pathlib import Path

from provisioning_backup_rsnapshot import relink

ARMED = Path(os.environ["JAIL_FAULT_ARMED"])
REACHED = Path(os.environ["JAIL_FAULT_REACHED"])


def stop_here(jail: str, path: str) -> None:
    if ARMED.exists() and not REACHED.exists():
        REACHED.write_text(f"{jail}\n{path}\n")
        while True:
            time.sleep(60)


relink.between_renames = stop_here
sys.argv[0] = "provisioning"
runpy.run_module("provisioning", run_name="__main__", alter_sys=True)

"""A reader of stdout that goes away early (``provisioning-daemon status | head -3``).

Python raises BrokenPipeError at the write, and again, with a traceback on
stderr, when it flushes stdout at exit. The reader has what it wanted: the
command says nothing more and ends with its own exit code.
"""
from __future__ import annotations

import os
import sys


def quiet_broken_pipe() -> None:
    """Send the rest of stdout to /dev/null, so that nothing fails again on the way out."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, sys.stdout.fileno())
    finally:
        os.close(devnull)

"""Generic/Exec's return values: the command's exit code, or one of the plugin's own (90-99).

A plugin's values are 0-99 (the core writes 100 and up for its refusals,
see provisioning.base.codes). So the command's exit codes 0-89 are passed on as
they are, and everything else becomes one of the plugin's codes, which say
what happened; the log line names the real exit code.
"""
from __future__ import annotations

from enum import IntEnum

# The highest exit code of a command that is written as it is.
LAST_PASSED_ON = 89
# Exit codes with a meaning of their own, as shells and GNU timeout use them
# (and as the transport reports a command it killed or could not start).
EXIT_TIMEOUT = 124
EXIT_NOT_EXECUTABLE = 126
EXIT_NOT_FOUND = 127


class Code(IntEnum):
    SUCCESS = 0
    NO_COMMAND = 90              # no command configured for this request type: refused, nothing run
    COMMAND_NOT_RUNNABLE = 91    # missing, not executable (exit 126, 127)
    COMMAND_TIMED_OUT = 92       # killed after TIMEOUT or at the request's deadline (exit 124)
    COMMAND_KILLED = 93          # ended by a signal
    EXIT_CODE_OUT_OF_RANGE = 94  # exited 90-255 (other than the above): not a plugin's return value


MEANINGS = {
    Code.SUCCESS: "the command exited 0",
    Code.NO_COMMAND: "[Exec] has no command for this request type (ADD_CMD, MODIFY_CMD or DELETE_CMD): "
                     "the request was refused and nothing was run",
    Code.COMMAND_NOT_RUNNABLE: "the command could not be started: missing or not executable (exit 126 or "
                               "127); the log names it",
    Code.COMMAND_TIMED_OUT: "the command ran longer than [Exec] TIMEOUT or the request's deadline and was "
                            "killed (or exited 124)",
    Code.COMMAND_KILLED: "the command was ended by a signal",
    Code.EXIT_CODE_OUT_OF_RANGE: "the command exited 90 or more: exit codes 90-255 are not passed on "
                                 "(90-99 are the plugin's, 100 and up the core's); the log has the real one",
}


def return_value(returncode: int) -> Code | int:
    """The request's return value for a command that ended with ``returncode``.

    0-89 as they are; negative (ended by a signal) is COMMAND_KILLED; 124
    COMMAND_TIMED_OUT; 126 and 127 COMMAND_NOT_RUNNABLE; any other code from
    90 up EXIT_CODE_OUT_OF_RANGE.
    """
    if 0 <= returncode <= LAST_PASSED_ON:
        return returncode
    if returncode < 0:
        return Code.COMMAND_KILLED
    if returncode == EXIT_TIMEOUT:
        return Code.COMMAND_TIMED_OUT
    if returncode in (EXIT_NOT_EXECUTABLE, EXIT_NOT_FOUND):
        return Code.COMMAND_NOT_RUNNABLE
    return Code.EXIT_CODE_OUT_OF_RANGE


def meanings() -> dict[int, str]:
    """The plugin's own values with their meanings (1-89 are the command's and mean what it says)."""
    table = {int(code): f"{code.name}: {MEANINGS[code]}" for code in Code}
    for value in range(1, LAST_PASSED_ON + 1):
        table[value] = f"the command exited {value} (its own meaning; the log has its last stderr line)"
    return table

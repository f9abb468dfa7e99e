"""Numbers the daemon hands out: process exit codes and the core's return values.

The plugin's own return values (0-99) are defined by each plugin; the core
keeps 100 and up for refusals it makes before any plugin is asked, so the two
never collide in sstProvisioningReturnValue.
"""
from enum import IntEnum


class ExitCode(IntEnum):
    """Exit status of ``provisioning-daemon``."""

    OK = 0                  # normal stop (signal), or --check passed
    INTERNAL_ERROR = 1      # a bug: unexpected exception
    USAGE = 2               # bad command line (argparse's own code)
    CONFIG_ERROR = 3        # configuration or plugin set-up refused
    LDAP_UNREACHABLE = 4    # no LDAP server answered within the configured attempts
    ALREADY_RUNNING = 5     # another daemon holds the lock
    NOT_RETRIED = 6         # retry (deletions): at least one entry named could not be written anew
                            # (is not held)
    GATEWAY_UNREACHABLE = 7  # CLISSH: the gateway did not answer within the configured attempts
    OUTPUT_CLOSED = 141     # stdout was closed before everything was written (... | head): 128 + SIGPIPE,
                            # as a shell reports a program that signal ended (status keeps its own code)


class ReturnValue(IntEnum):
    """sstProvisioningReturnValue values the core writes itself."""

    SUCCESS = 0
    UNDEFINED_ERROR = 1         # the plugin raised, or returned something that is not an int
    UNKNOWN_MODE = 100          # sstProvisioningMode is not add, modify or delete
    DELETE_WHILE_ACTIVE = 101   # delete requested while sstIsActive is not FALSE
    INVALID_EXECUTION_DATE = 102  # sstProvisioningExecutionDate is neither 0 nor a YYYYMMDD date


# What each of the core's values means, for status and retry (plugins name
# theirs through the provisioning_return_values hook).
MEANINGS = {
    ReturnValue.SUCCESS: "SUCCESS: the request was done",
    ReturnValue.UNDEFINED_ERROR: "UNDEFINED_ERROR: the plugin raised an exception or returned no number "
                                 "(traceback in the log)",
    ReturnValue.UNKNOWN_MODE: "UNKNOWN_MODE: sstProvisioningMode is not add, modify or delete",
    ReturnValue.DELETE_WHILE_ACTIVE: "DELETE_WHILE_ACTIVE: delete requested while sstIsActive is not FALSE",
    ReturnValue.INVALID_EXECUTION_DATE: "INVALID_EXECUTION_DATE: sstProvisioningExecutionDate is neither 0 "
                                        "nor a YYYYMMDD date",
}

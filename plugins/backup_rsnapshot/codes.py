"""Exit codes of the Backup/Rsnapshot plugin (sstProvisioningReturnValue).

0 to 7 are the original's (wiki page "prov-backup-rsnapshot"); 8 and up are
failures it did not name. 12 to 15 are refusals: the request was not done
and nothing was changed for it (no command, no file, no quota call).
docs/return-values.md lists them with the core's.
"""
from enum import IntEnum


class Code(IntEnum):
    SUCCESS = 0
    UNDEFINED_ERROR = 1
    USER_NOT_PRESENT_IN_BACKEND = 2
    RUNTIME_NOT_SATISFIED = 3            # was PERL_VERSION_NOT_STATISFIED
    CANNOT_CHECK_HOME_DIR_PRESENCE = 4
    CANNOT_CREATE_HOME_DIR = 5
    CANNOT_SET_QUOTA = 6
    CANNOT_CREATE_RSNAPSHOT_CONFIGURATION = 7
    CANNOT_REMOVE_RSNAPSHOT_CONFIGURATION = 8
    CANNOT_ARCHIVE_ACCOUNT_DATA = 9
    PATH_OUTSIDE_BACKUP_ROOT = 10
    INVALID_ACCOUNT_DATA = 11
    AMBIGUOUS_IDENTITY = 12              # uid not single-valued, or not the DN's uid
    NOT_THIS_ENTRYS_ACCOUNT = 13         # the account directory belongs to another entry
    ACCOUNT_DIRECTORY_MISPLACED = 14     # not at BACKUP_ROOT/<pattern>/<uid>: could nest in another's
    UNSAFE_ACCOUNT_PATH = 15             # a link, or a folder not root's, where root must work


class StepError(Exception):
    """A step failed: ``code`` goes to LDAP, ``message`` to the log."""

    def __init__(self, code: Code, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

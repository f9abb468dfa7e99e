"""Disk quota through SET_QUOTA_CMD (setquota)."""
from __future__ import annotations

from provisioning.api import Transport

from provisioning_backup_rsnapshot.codes import Code, StepError


def blocks(quota_bytes: int) -> int:
    """setquota counts 1 KiB blocks; a partial block is a whole one."""
    return -(-quota_bytes // 1024)


def quota_argv(cmd: str, uid_number: int, limit_blocks: int, mountpoint: str) -> list[str]:
    """``CMD -u UIDNUMBER SOFT HARD 0 0 MOUNTPOINT``: block limits, no inode limits."""
    return [cmd, "-u", str(uid_number), str(limit_blocks), str(limit_blocks), "0", "0", mountpoint]


def set_quota(cmd: str, uid_number: int, quota_bytes: int, mountpoint: str, transport: Transport) -> None:
    """Apply the limit (0 lifts it); StepError 6 if the command fails."""
    result = transport.run(quota_argv(cmd, uid_number, blocks(quota_bytes), mountpoint))
    if not result.ok:
        raise StepError(Code.CANNOT_SET_QUOTA, f"setting the quota failed: {result.describe()}")

"""The Backup/Rsnapshot service plugin: stoney backup accounts on this host.

For each account: a chrooted home for rsync/sftp (CREATE_CHROOT_CMD), a disk
quota (SET_QUOTA_CMD) and an rsnapshot configuration (RSNAPSHOT_CONFIG_FILE).
Registered in the ``provisioning.plugins`` entry-point group as
``Backup/Rsnapshot``, exactly like an external plugin. Imported as
``provisioning_backup_rsnapshot``.
"""

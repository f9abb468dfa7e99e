"""The Backup/Rsnapshot service plugin: stoney backup accounts on this host.

For each account: a chrooted home for rsync/sftp (CREATE_CHROOT_CMD), a disk
quota (SET_QUOTA_CMD) and an rsnapshot configuration (RSNAPSHOT_CONFIG_FILE).
Registered in the ``provisioning.plugins`` entry-point group as
``Backup/Rsnapshot``, exactly like an external plugin. Imported as
``provisioning_backup_rsnapshot``.
"""

# How a checkout's plugins/ folder names this plugin without an install (the
# same line as its entry point in setup.cfg): see provisioning.plugins.
PROVISIONING_ENTRY_POINT = "Backup/Rsnapshot = provisioning_backup_rsnapshot.plugin:BackupRsnapshot"

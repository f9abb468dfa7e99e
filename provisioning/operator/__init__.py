"""Commands an operator runs beside the daemon: --check, status, retry, deletions, files, new-plugin and the LDIF loader."""

"""Backends: where requests come from. Only LDAP exists ([Database] BACKEND)."""

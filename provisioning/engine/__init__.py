"""The daemon itself: the loop, the router, the workers, the low-water cookie, the selfcare protocol, claims, LDAP mode, removals and the deletion brake."""

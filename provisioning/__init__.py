"""provisioning: a plugin-based daemon that makes a host follow an OpenLDAP directory."""

__version__ = "0.1.0"

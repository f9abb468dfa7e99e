"""The daemon process: loading a configuration with its plugin, the PID lock, detaching (--daemon) and SIGHUP's reload."""

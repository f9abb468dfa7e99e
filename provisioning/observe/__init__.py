"""What the loop tells the outside world: systemd (notify, watchdog), Prometheus metrics and the refresh's progress lines. Reads a view the daemon hands it."""

"""[Mail]: alerts and digests, the SMTP sender, their texts, and the capture of a request's log lines."""

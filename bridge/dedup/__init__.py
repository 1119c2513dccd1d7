"""The committed-ids store: which message ids were committed downstream, for a window."""

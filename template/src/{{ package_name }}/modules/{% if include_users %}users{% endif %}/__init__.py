"""Users: the people the service writes to (a minimal table other features build on)."""

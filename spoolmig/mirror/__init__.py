"""Stage 2: the replica of the source and its SQLite state; one pass at a time."""

"""Database access: engine factory, partitions, the event writer, dead letters."""

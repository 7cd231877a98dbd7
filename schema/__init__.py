"""The event contract shared by the producer (track) and the worker."""

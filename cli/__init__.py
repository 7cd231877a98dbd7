"""Operator commands: ``python -m cli --help``.

``cli.main`` holds the top-level group; each concern adds its command group in
a module of its own (``cli.partitions``) and registers it in ``cli.main``.
"""

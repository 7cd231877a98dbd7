"""Development tooling shared by ``tests/``, ``bench/`` and ``demo/``; not product code.

Nothing in the product packages imports it, and it imports neither ``tests``
nor ``bench``: it is the one place both sides take their subprocess runner
(``devtools.processes``), the ingest consumers run as subprocesses
(``devtools.workers``), private servers on spare ports (``devtools.servers``),
publishing helpers (``devtools.messages``) and the fault scenarios
(``devtools.faults``).
"""

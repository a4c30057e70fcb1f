"""sqlbridge: SQL Server code calls HTTP APIs through an outbox table and a worker.

The path of one request, module by module: ``registry`` (operations declared once) ->
``queue`` (outbox state machine, per dialect) -> ``worker`` (claims, threads, shutdown) ->
``providers`` (Afilnet, AnnA, generic HTTP) -> ``inbox`` (fetched data into tables).
"""

__version__ = "0.1.0"

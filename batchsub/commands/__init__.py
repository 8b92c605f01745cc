"""One module per command: ``commands/plan.py`` holds ``batchsub plan``.

Each module has ``add_parser(commands)``, which registers its subcommand with
``handler=...`` (a ``(Settings, Namespace) -> int`` callable); ``batchsub.cli`` imports only
the module of the command being run. Flags shared by several commands are in ``_flags``.
"""

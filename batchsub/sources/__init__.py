"""Sources of manifests: where jobs come from.

``directory`` (``run``, ``validate``, ``plan``, ``publish``), ``dropfolder`` (``watch``),
``amqp`` (``consume``) and ``failed`` (``retry``: the ledger's failed jobs) each implement
``batchsub.protocols.Source``: ``items()`` streams ManifestItems, and ``finish()`` is told
each item's outcome once it is committed. ``_tally`` counts those outcomes per file or message.
"""

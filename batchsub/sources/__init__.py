"""Sources of manifests: where jobs come from (a directory today; a drop folder or a queue later).

Each implements ``batchsub.protocols.Source``: ``items()`` streams ManifestItems and
``settle()`` is told each item's outcome once it is committed.
"""

from batchsub.sources.directory import DirectorySource

__all__ = ["DirectorySource"]

"""The file index: a rerun skips manifest files that are unchanged and fully created."""

from __future__ import annotations

import os
from pathlib import Path

import orjson

from batchsub.jobs import (
    InvalidManifest,
    JobResult,
    JobSpec,
    LedgerState,
    ManifestItem,
    Outcome,
    RememberedJob,
)
from batchsub.ledgers.sqlite import SqliteLedger
from batchsub.model import validate_spec
from batchsub.sources.directory import DirectorySource
from tests.support import write_manifests

P = "proj"


async def one_pass(root: Path, ledger: SqliteLedger) -> list[ManifestItem]:
    """Read ``root`` once as a run would, recording every valid job as created."""
    source = DirectorySource(root, validate=False)
    source.use_index(ledger, P)
    items = [item async for item in source.items()]
    for item in items:
        if isinstance(item, JobSpec) and validate_spec(item) is not None:  # as the submitter
            await source.finish(item, JobResult(item.source, item.name, Outcome.INVALID))
        elif isinstance(item, JobSpec):
            await ledger.record(P, item, LedgerState.CREATED, job_id=1)
            await source.finish(item, JobResult(item.source, item.name, Outcome.CREATED))
        elif isinstance(item, InvalidManifest):
            await source.finish(item, JobResult(item.source, item.name, Outcome.INVALID))
        else:
            await source.finish(item, JobResult(item.source, item.name, Outcome.ALREADY_CREATED))
    return items


async def test_unchanged_created_files_are_not_read_again(tmp_path: Path) -> None:
    root = tmp_path / "m"
    write_manifests(root, 5)
    (root / "list.json").write_bytes(orjson.dumps([{"name": "l0"}, {"name": "l1"}]))
    (root / "typo.json").write_text('{"name": "typo", "parallel_numbr": 1}')
    async with SqliteLedger(tmp_path / "l.db") as ledger:
        first = await one_pass(root, ledger)
        second = await one_pass(root, ledger)

    assert not any(isinstance(item, RememberedJob) for item in first)
    remembered = [item for item in second if isinstance(item, RememberedJob)]
    assert sorted(item.name for item in remembered) == [
        *(f"job-{i:05d}" for i in range(5)),
        "l0",
        "l1",
    ]
    assert {item.source for item in remembered if item.name == "l1"} == {f"{root}/list.json#1"}
    # A file with an invalid job is read every time, so its problem is reported every time.
    assert [item.source for item in second if not isinstance(item, RememberedJob)] == [
        f"{root}/typo.json"
    ]


async def test_a_changed_file_is_read_again_even_with_its_old_size_and_mtime(
    tmp_path: Path,
) -> None:
    root = tmp_path / "m"
    write_manifests(root, 2)
    path = root / "job-00001.json"
    async with SqliteLedger(tmp_path / "l.db") as ledger:
        await one_pass(root, ledger)
        before = path.stat()
        body = path.read_bytes().replace(b'"cu_number":2', b'"cu_number":3')
        path.write_bytes(body)
        os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))  # as `cp -p` would
        second = await one_pass(root, ledger)

    kinds = {item.name: type(item) for item in second}
    assert kinds == {"job-00000": RememberedJob, "job-00001": JobSpec}

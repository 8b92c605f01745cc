"""SqliteLedger against real files: durability, group commit, paging, the lock, broken files."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest
import structlog

from batchsub.errors import LedgerError, LedgerLockedError, LedgerRefusedError
from batchsub.jobs import Claim, ErrorInfo, LedgerRecord, LedgerState
from batchsub.ledgers.sqlite import _MIGRATIONS, _REMEMBERED_SQL, SCHEMA_VERSION, SqliteLedger
from batchsub.protocols import Ledger
from tests.fs_support import bind_mount
from tests.support import FakeClock, attempt_of, job_spec

P = "project-1"


OpenLedger = Callable[..., Coroutine[Any, Any, SqliteLedger]]


@pytest.fixture
async def open_ledger(tmp_path: Path) -> AsyncIterator[OpenLedger]:
    """Open ledgers (default file tmp_path/batchsub.db) and close them all at teardown."""
    opened: list[SqliteLedger] = []

    async def factory(path: Path | None = None, **kwargs: Any) -> SqliteLedger:
        ledger = SqliteLedger(path or tmp_path / "batchsub.db", **kwargs)
        await ledger.open()
        opened.append(ledger)
        return ledger

    yield factory
    for ledger in opened:
        await ledger.close()


async def all_records(ledger: SqliteLedger, project_id: str | None = None) -> list[LedgerRecord]:
    return [rec async for rec in ledger.records(project_id)]


def test_sqlite_ledger_is_a_ledger(tmp_path: Path) -> None:
    ledger: Ledger = SqliteLedger(tmp_path / "batchsub.db")  # mypy checks the protocol
    assert isinstance(ledger, SqliteLedger)


async def test_begin_attempt_increments_and_survives_reopen(open_ledger: OpenLedger) -> None:
    clock = FakeClock(1_000.0)
    ledger = await open_ledger(clock=clock)
    assert attempt_of(await ledger.begin_attempt(P, job_spec("a"))) == 1
    clock.now = 1_005.0
    changed = job_spec("a", source="jobs/renamed.yaml", body=b'{"name":"a","queue_name":"q2"}')
    assert attempt_of(await ledger.begin_attempt(P, changed)) == 2
    await ledger.close()

    reopened = await open_ledger()
    rec = (await reopened.get_many(P, ["a"]))["a"]
    assert (rec.state, rec.attempts, rec.job_id, rec.adopted) == (
        LedgerState.SUBMITTING,
        2,
        None,
        False,
    )
    assert rec.spec() == changed  # source, body and hash follow the latest attempt
    assert (rec.created_at, rec.updated_at) == (1_000.0, 1_005.0)
    assert attempt_of(await reopened.begin_attempt(P, changed)) == 3


async def test_record_inserts_an_unknown_job_then_get_many(open_ledger: OpenLedger) -> None:
    ledger = await open_ledger(clock=FakeClock(42.0))
    await ledger.record(P, job_spec("adopted"), LedgerState.CREATED, job_id=138, adopted=True)
    await ledger.begin_attempt(P, job_spec("other"))

    found = await ledger.get_many(P, ["adopted", "missing", "adopted"])
    assert list(found) == ["adopted"]
    rec = found["adopted"]
    assert rec == LedgerRecord(
        project_id=P,
        name="adopted",
        state=LedgerState.CREATED,
        job_id=138,
        attempts=0,
        error=None,
        source="jobs/adopted.yaml",
        body_hash=job_spec("adopted").body_hash,
        body=job_spec("adopted").body,
        adopted=True,
        created_at=42.0,
        updated_at=42.0,
    )
    assert await ledger.get_many("project-2", ["adopted"]) == {}


async def test_record_keeps_job_id_when_none_and_error_none_clears(
    open_ledger: OpenLedger,
) -> None:
    ledger = await open_ledger()
    spec = job_spec("a")
    await ledger.begin_attempt(P, spec)
    await ledger.record(P, spec, LedgerState.UNKNOWN, job_id=7)
    await ledger.record(P, spec, LedgerState.RETRYING)
    rec = (await ledger.get_many(P, ["a"]))["a"]
    assert (rec.state, rec.job_id, rec.attempts) == (LedgerState.RETRYING, 7, 1)

    error = ErrorInfo(message="quota insufficient", code="DLI.1028", http_status=400)
    await ledger.record(P, spec, LedgerState.FAILED, error=error)
    rec = (await ledger.get_many(P, ["a"]))["a"]
    assert (rec.state, rec.error, rec.job_id) == (LedgerState.FAILED, error, 7)

    await ledger.record(P, spec, LedgerState.RETRYING)
    assert (await ledger.get_many(P, ["a"]))["a"].error is None


async def test_created_is_final(open_ledger: OpenLedger) -> None:
    # A late or mistaken write must never make a created job look sendable again.
    ledger = await open_ledger()
    spec = job_spec("a")
    await ledger.record(P, spec, LedgerState.CREATED, job_id=7)
    await ledger.record(P, spec, LedgerState.UNKNOWN)
    rec = (await ledger.get_many(P, ["a"]))["a"]
    assert (rec.state, rec.job_id) == (LedgerState.CREATED, 7)


async def test_get_many_over_several_chunks(open_ledger: OpenLedger) -> None:
    ledger = await open_ledger()
    names = [f"job-{i:04d}" for i in range(1_200)]
    await asyncio.gather(*(ledger.begin_attempt(P, job_spec(n)) for n in names[::2]))
    found = await ledger.get_many(P, names)
    assert sorted(found) == names[::2]
    assert all(found[n].name == n for n in found)


async def test_in_doubt_lists_submitting_and_unknown_only(open_ledger: OpenLedger) -> None:
    ledger = await open_ledger()
    for name in ("s", "u", "r", "c", "f"):
        await ledger.begin_attempt(P, job_spec(name))
    await ledger.begin_attempt("project-2", job_spec("elsewhere"))
    await ledger.record(P, job_spec("u"), LedgerState.UNKNOWN)
    await ledger.record(P, job_spec("r"), LedgerState.RETRYING)
    await ledger.record(P, job_spec("c"), LedgerState.CREATED, job_id=1)
    await ledger.record(P, job_spec("f"), LedgerState.FAILED, error=ErrorInfo("no queue"))

    doubtful = await ledger.in_doubt(P)
    assert {(r.name, r.state) for r in doubtful} == {
        ("s", LedgerState.SUBMITTING),
        ("u", LedgerState.UNKNOWN),
    }


async def test_records_ordered_by_source_then_name_across_pages(open_ledger: OpenLedger) -> None:
    ledger = await open_ledger(page_size=3)
    specs = [
        job_spec(f"n{i}", source=f"dir/m{i % 4}.yaml#{i % 2}") for i in reversed(range(11))
    ]  # 11 rows: several pages of 3, duplicate sources, written out of order
    for spec in specs:
        await ledger.begin_attempt(P, spec)
    await ledger.begin_attempt("project-0", job_spec("n1", source="dir/m1.yaml#1"))

    mine = await all_records(ledger, P)
    assert [(r.source, r.name) for r in mine] == sorted((s.source, s.name) for s in specs)
    assert {r.project_id for r in mine} == {P}

    everything = await all_records(ledger)
    assert len(everything) == 12
    keys = [(r.source, r.name, r.project_id) for r in everything]
    assert keys == sorted(keys)


async def test_records_of_an_empty_ledger(open_ledger: OpenLedger) -> None:
    ledger = await open_ledger(page_size=2)
    assert await all_records(ledger) == []


async def test_concurrent_writes_share_commits_and_are_durable(
    open_ledger: OpenLedger, tmp_path: Path
) -> None:
    ledger = await open_ledger()
    before = ledger.commits
    names = [f"job-{i:03d}" for i in range(200)]
    attempts = await asyncio.gather(*(ledger.begin_attempt(P, job_spec(n)) for n in names))
    assert [attempt_of(claim) for claim in attempts] == [1] * 200
    assert 1 <= ledger.commits - before < 200
    await ledger.close()

    # A plain sqlite3 connection sees every row: they were committed, not just queued.
    with sqlite3.connect(tmp_path / "batchsub.db") as conn:
        rows = conn.execute("SELECT name, attempts, state FROM jobs ORDER BY name").fetchall()
    conn.close()
    assert rows == [(n, 1, "submitting") for n in names]


async def test_same_job_twice_in_one_batch_gets_distinct_attempts(
    open_ledger: OpenLedger,
) -> None:
    ledger = await open_ledger()
    before = ledger.commits
    results = await asyncio.gather(
        ledger.begin_attempt(P, job_spec("a")),
        ledger.begin_attempt(P, job_spec("b")),
        ledger.begin_attempt(P, job_spec("a")),
        ledger.record(P, job_spec("a"), LedgerState.CREATED, job_id=9),
    )
    assert list(results) == [Claim(1), Claim(1), Claim(2), None]
    assert ledger.commits - before == 1
    rec = (await ledger.get_many(P, ["a"]))["a"]
    assert (rec.attempts, rec.state, rec.job_id) == (2, LedgerState.CREATED, 9)


async def test_a_lone_write_commits_at_once(open_ledger: OpenLedger) -> None:
    ledger = await open_ledger()
    before = ledger.commits
    await ledger.begin_attempt(P, job_spec("a"))
    assert ledger.commits == before + 1


async def test_close_flushes_queued_writes_and_is_idempotent(
    open_ledger: OpenLedger, tmp_path: Path
) -> None:
    ledger = await open_ledger()
    futures = [ledger.begin_attempt(P, job_spec(f"j{i}")) for i in range(50)]  # queued now
    await ledger.close()
    assert [attempt_of(f.result()) for f in futures] == [1] * 50
    await ledger.close()
    with pytest.raises(LedgerError, match="is not open"):
        await ledger.begin_attempt(P, job_spec("late"))

    async with SqliteLedger(tmp_path / "batchsub.db") as again:
        assert len(await again.get_many(P, [f"j{i}" for i in range(50)])) == 50


async def test_a_write_commits_even_when_its_caller_is_cancelled(
    open_ledger: OpenLedger,
) -> None:
    ledger = await open_ledger()

    async def caller() -> None:
        await ledger.record(P, job_spec("c"), LedgerState.CREATED, job_id=7)

    task = asyncio.create_task(caller())
    await asyncio.sleep(0)  # the write is queued; the caller waits for its commit
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await ledger.close()
    ledger = await open_ledger()
    record = (await ledger.get_many(P, ["c"]))["c"]
    assert (record.state, record.job_id) == (LedgerState.CREATED, 7)


async def test_write_error_reaches_callers_and_writer_survives(
    open_ledger: OpenLedger, tmp_path: Path
) -> None:
    path = tmp_path / "batchsub.db"
    ledger = await open_ledger(busy_timeout=0.05)
    other = sqlite3.connect(path, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")  # another writer holds the file's write lock
        results = await asyncio.gather(
            ledger.begin_attempt(P, job_spec("a")),
            ledger.record(P, job_spec("b"), LedgerState.CREATED),
            return_exceptions=True,
        )
        for result in results:
            assert isinstance(result, LedgerError)
            assert str(path) in str(result)
            assert "locked" in str(result)
        other.execute("ROLLBACK")
    finally:
        other.close()
    # the failed attempt left no trace
    assert attempt_of(await ledger.begin_attempt(P, job_spec("a"))) == 1
    assert list(await ledger.get_many(P, ["a", "b"])) == ["a"]


async def test_a_write_refused_for_its_values_fails_alone_in_its_group_commit(
    open_ledger: OpenLedger,
) -> None:
    ledger = await open_ledger()
    writes: list[asyncio.Future[Any]] = [
        ledger.begin_attempt(P, job_spec(f"j{i}")) for i in range(4)
    ]
    writes.insert(2, ledger.record(P, job_spec("big"), LedgerState.CREATED, job_id=2**70))
    writes.append(ledger.record(P, job_spec("ok"), LedgerState.CREATED, job_id=7))
    results = await asyncio.gather(*writes, return_exceptions=True)

    refused = results.pop(2)
    assert isinstance(refused, LedgerRefusedError)
    assert "too large" in str(refused)
    assert not any(isinstance(r, BaseException) for r in results), results
    assert sorted(await ledger.get_many(P, ["j0", "j1", "j2", "j3", "big", "ok"])) == [
        "j0", "j1", "j2", "j3", "ok",
    ]  # fmt: skip
    # A failure of the database itself still fails the whole batch as an outage.
    assert not isinstance(LedgerError("x"), LedgerRefusedError)


async def test_text_from_outside_is_stored_escaped(open_ledger: OpenLedger) -> None:
    ledger = await open_ledger()
    spec = job_spec("a", source="dir/caf\udce9.json")  # a file name that is not UTF-8
    await ledger.begin_attempt(P, spec)
    await ledger.record(P, spec, LedgerState.FAILED, error=ErrorInfo("bad\x00 \ud800", "C\x01"))
    await ledger.remember_files(P, [("dir/caf\udce9.json", "fp", ["a"])])  # not remembered
    assert await ledger.remembered_files(P, {"dir/caf\udce9.json": "fp"}) == {}  # nor looked up
    rec = (await ledger.get_many(P, ["a"]))["a"]
    assert rec.source == "dir/caf\\xe9.json"  # the byte the file name had
    assert rec.error == ErrorInfo("bad\\x00 \\ud800", "C\\x01")


async def test_second_ledger_on_the_same_file_is_refused_until_close(
    open_ledger: OpenLedger, tmp_path: Path
) -> None:
    path = tmp_path / "batchsub.db"
    first = await open_ledger(path)
    second = SqliteLedger(path)
    with pytest.raises(LedgerLockedError) as caught:
        await second.open()
    message = str(caught.value)
    assert str(path) in message
    assert f"pid {os.getpid()}" in message
    assert "\n" not in message
    assert (tmp_path / "batchsub.db.lock").read_text().strip() == str(os.getpid())

    await first.close()
    await second.open()
    try:
        assert attempt_of(await second.begin_attempt(P, job_spec("a"))) == 1
    finally:
        await second.close()


HOLD_LOCK = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
fcntl.flock(fd, fcntl.LOCK_EX)
print("locked", flush=True)
time.sleep(60)
"""


async def test_lock_of_a_killed_process_is_free(open_ledger: OpenLedger, tmp_path: Path) -> None:
    path = tmp_path / "batchsub.db"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(LedgerLockedError, match=f"pid {holder.pid}"):
            await SqliteLedger(path).open()
    finally:
        holder.kill()  # SIGKILL: no cleanup code runs in the holder
        holder.wait()
        if holder.stdout is not None:
            holder.stdout.close()
    assert holder.returncode == -9

    ledger = await open_ledger(path)
    assert attempt_of(await ledger.begin_attempt(P, job_spec("a"))) == 1


def spellings(tmp_path: Path, path: Path) -> list[Path]:
    """Other names of the file ``path``: a symlink, a symlinked directory, ``..``, relative,
    absolute, a hard link."""
    (tmp_path / "link.db").symlink_to(path)
    (tmp_path / "linked-dir").symlink_to(path.parent, target_is_directory=True)
    (tmp_path / "sub").mkdir()
    os.link(path, tmp_path / "hard.db")
    return [
        tmp_path / "link.db",
        tmp_path / "linked-dir" / path.name,
        tmp_path / "sub" / ".." / path.relative_to(tmp_path),
        Path(os.path.relpath(path)),
        path.absolute(),
        tmp_path / "hard.db",
    ]


async def test_every_name_of_the_file_is_refused_while_one_holds_it(
    open_ledger: OpenLedger, tmp_path: Path
) -> None:
    path = tmp_path / "data" / "batchsub.db"
    path.parent.mkdir()
    first = await open_ledger(path)
    await first.begin_attempt(P, job_spec("a"))
    for other in spellings(tmp_path, path):
        with pytest.raises(LedgerLockedError, match=f"pid {os.getpid()}") as caught:
            await SqliteLedger(other).open()
        assert str(other) in str(caught.value)
    async with SqliteLedger(tmp_path / "link.db", read_only=True) as reader:
        assert list(await reader.get_many(P, ["a"])) == ["a"]  # readers still read


async def test_a_bind_mount_of_the_folder_is_the_same_ledger(
    open_ledger: OpenLedger, tmp_path: Path
) -> None:
    path = tmp_path / "data" / "batchsub.db"
    path.parent.mkdir()
    await open_ledger(path)
    with bind_mount(path.parent, tmp_path / "mounted") as mounted:
        with pytest.raises(LedgerLockedError, match=f"pid {os.getpid()}"):
            await SqliteLedger(mounted / path.name).open()


async def test_new_ledger_files_are_private_whatever_the_umask(tmp_path: Path) -> None:
    path = tmp_path / "batchsub.db"
    old = os.umask(0)
    try:
        async with SqliteLedger(path) as ledger:
            await ledger.begin_attempt(P, job_spec("a"))
            made = [path, Path(f"{path}-wal"), Path(f"{path}-shm"), Path(f"{path}.lock")]
            modes = {p.name: oct(p.stat().st_mode & 0o777) for p in made}
    finally:
        os.umask(old)
    assert modes == {p.name: "0o600" for p in made}


async def test_an_existing_ledger_keeps_its_mode_and_a_warning_says_why_to_change_it(
    tmp_path: Path,
) -> None:
    path = tmp_path / "batchsub.db"
    async with SqliteLedger(path):
        pass
    path.chmod(0o640)
    with structlog.testing.capture_logs() as logs:
        async with SqliteLedger(path):
            pass
    assert path.stat().st_mode & 0o777 == 0o640
    warning = next(e for e in logs if e["event"] == "ledger.readable_by_others")
    assert warning["mode"] == "0640" and f"chmod 600 {path}" in warning["fix"]


async def test_corrupt_file_raises_ledger_error_naming_the_path(tmp_path: Path) -> None:
    path = tmp_path / "batchsub.db"
    path.write_bytes(b"this is not a database\x00" * 200)
    for _ in range(2):  # the second try proves the failed open released the lock
        with pytest.raises(LedgerError) as caught:
            await SqliteLedger(path).open()
        assert not isinstance(caught.value, LedgerLockedError)
        assert str(path) in str(caught.value)
        assert "not a database" in str(caught.value)


async def test_missing_directory_raises_ledger_error(tmp_path: Path) -> None:
    path = tmp_path / "nowhere" / "batchsub.db"
    with pytest.raises(LedgerError, match="does not exist") as caught:
        await SqliteLedger(path).open()
    assert str(path) in str(caught.value)
    assert not (tmp_path / "nowhere").exists()


async def test_directory_that_is_a_file_raises_ledger_error(tmp_path: Path) -> None:
    (tmp_path / "plain").write_text("x")
    path = tmp_path / "plain" / "batchsub.db"
    with pytest.raises(LedgerError, match="not a directory") as caught:
        await SqliteLedger(path).open()
    assert str(path) in str(caught.value)


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write in any directory")
async def test_unwritable_directory_raises_ledger_error(tmp_path: Path) -> None:
    locked = tmp_path / "readonly"
    locked.mkdir(mode=0o500)
    try:
        with pytest.raises(LedgerError, match="not writable") as caught:
            await SqliteLedger(locked / "batchsub.db").open()
        assert str(locked / "batchsub.db") in str(caught.value)
    finally:
        locked.chmod(0o700)


async def test_schema_version_and_wal_are_set(open_ledger: OpenLedger, tmp_path: Path) -> None:
    ledger = await open_ledger()
    await ledger.close()
    with sqlite3.connect(tmp_path / "batchsub.db") as conn:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
        indexes = {r[1] for r in conn.execute("PRAGMA index_list(jobs)").fetchall()}
    conn.close()
    assert version == SCHEMA_VERSION >= 1
    assert mode == "wal"
    assert "jobs_by_state" in indexes


async def test_a_version_2_ledger_is_migrated_with_its_records(tmp_path: Path) -> None:
    # Version 2 kept jobs WITHOUT ROWID; version 3 copies them into a rowid table.
    path = tmp_path / "batchsub.db"
    row = "INSERT INTO jobs VALUES (?, ?, ?, ?, 1, NULL, NULL, NULL, ?, 'h', ?, 0, 1.0, 2.0)"
    with sqlite3.connect(path) as conn:
        for version in (0, 1):
            conn.executescript(_MIGRATIONS[version])
        conn.execute("PRAGMA user_version = 2")
        conn.execute(row, (P, "a", "submitting", None, "jobs/a.yaml", b'{"name":"a"}'))
        conn.execute(row, (P, "b", "created", 7, "jobs/b.yaml", b'{"name":"b"}'))
        old_sql = conn.execute("SELECT sql FROM sqlite_master WHERE name = 'jobs'").fetchone()
    conn.close()
    assert "WITHOUT ROWID" in old_sql[0]

    async with SqliteLedger(path) as ledger:
        records = await ledger.get_many(P, ["a", "b"])
        await ledger.record(P, job_spec("a"), LedgerState.CREATED, job_id=8)
        after = await ledger.get_many(P, ["a"])
    assert records["a"].state is LedgerState.SUBMITTING and records["a"].body == b'{"name":"a"}'
    assert records["b"].state is LedgerState.CREATED and records["b"].job_id == 7
    assert records["b"].source == "jobs/b.yaml" and records["b"].updated_at == 2.0
    assert after["a"].job_id == 8 and after["a"].attempts == 1
    with sqlite3.connect(path) as conn:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        new_sql = conn.execute("SELECT sql FROM sqlite_master WHERE name = 'jobs'").fetchone()
        indexes = {r[1] for r in conn.execute("PRAGMA index_list(jobs)").fetchall()}
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    conn.close()
    assert version == 5 and SCHEMA_VERSION == 5
    assert "WITHOUT ROWID" not in new_sql[0]
    assert {"jobs_by_state", "jobs_by_source"} <= indexes
    assert tables == {"jobs", "files", "updates"}


async def test_remembered_jobs_are_looked_up_by_name_not_by_state(tmp_path: Path) -> None:
    # Planned on the state index, a rerun's lookups scanned every created job per chunk.
    path = tmp_path / "batchsub.db"
    async with SqliteLedger(path) as ledger:
        for name in ("a", "b"):
            await ledger.record(P, job_spec(name), LedgerState.CREATED, job_id=1)
    names = ["a", "b", *(f"absent-{i}" for i in range(498))]  # a whole chunk, as reruns ask
    with sqlite3.connect(path) as conn:
        sql = _REMEMBERED_SQL.format(marks=",".join("?" * len(names)))
        plan = " ".join(row[-1] for row in conn.execute(f"EXPLAIN QUERY PLAN {sql}", (P, *names)))
        found = conn.execute(sql, (P, *names)).fetchall()
    conn.close()
    assert "(project_id=? AND name=?)" in plan and "jobs_by_state" not in plan
    assert sorted(row[1] for row in found) == ["a", "b"]


async def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "batchsub.db"
    with sqlite3.connect(path) as conn:
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(LedgerError, match="newer than this batchsub") as caught:
        await SqliteLedger(path).open()
    assert str(path) in str(caught.value)


async def test_read_only_reads_beside_a_writer_and_never_writes(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    async with SqliteLedger(path) as writer:
        await writer.record(P, job_spec("a"), LedgerState.CREATED, job_id=3)
        async with SqliteLedger(path, read_only=True) as reader:  # no lock taken
            assert (await reader.get_many(P, ["a"]))["a"].job_id == 3
            with pytest.raises(LedgerError, match="read-only"):
                await reader.record(P, job_spec("b"), LedgerState.CREATED, job_id=4)
        await writer.record(P, job_spec("b"), LedgerState.CREATED, job_id=4)  # still ours

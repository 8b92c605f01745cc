"""DirectorySource: recursive, stable order, streamed, duplicates named with both files."""

from __future__ import annotations

import asyncio
from pathlib import Path

import orjson
import pytest

from batchsub.errors import ConfigError
from batchsub.jobs import InvalidManifest, JobResult, JobSpec, ManifestItem, Outcome
from batchsub.protocols import Source
from batchsub.sources.directory import DirectorySource, _chunks, _Unreadable, iter_manifest_paths
from tests.fs_support import odd_entries

REPO = Path(__file__).resolve().parent.parent


def write(path: Path, content: str | dict[str, object] | list[dict[str, object]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, str):
        path.write_text(content)
    else:
        path.write_bytes(orjson.dumps(content))


async def collect(source: Source) -> list[ManifestItem]:
    return [item async for item in source.items()]


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A manifest folder written out of order, with files that must be skipped."""
    root = tmp_path / "manifests"
    write(root / "c" / "d" / "e.json", {"name": "e"})
    write(root / "b.json", {"name": "b"})
    write(root / "a.yml", "name: a-yml\n")
    write(root / "a" / "z.yaml", "name: z\n")
    write(root / "A.JSON", {"name": "upper"})
    write(root / "notes.txt", "name: not-a-manifest\n")
    write(root / "README.md", "# docs\n")
    write(root / ".hidden.json", {"name": "hidden"})
    write(root / ".git" / "config.json", {"name": "in-dot-dir"})
    write(root / "list.json", [{"name": "l0"}, {"name": "l1"}])
    return root


EXPECTED_ORDER = [
    "A.JSON",
    "a/z.yaml",
    "a.yml",
    "b.json",
    "c/d/e.json",
    "list.json#0",
    "list.json#1",
]


async def test_order_is_stable_recursive_and_filtered(tree: Path) -> None:
    source = DirectorySource(tree)
    first = await collect(source)
    assert [item.source for item in first] == [f"{tree}/{rel}" for rel in EXPECTED_ORDER]
    assert all(isinstance(item, JobSpec) for item in first)
    assert [item.name for item in first] == ["upper", "z", "a-yml", "b", "e", "l0", "l1"]
    assert [item.source for item in await collect(source)] == [item.source for item in first]


async def test_sources_are_root_slash_relative_as_given(
    tree: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tree.parent)
    items = await collect(DirectorySource(Path("manifests")))
    assert items[1].source == "manifests/a/z.yaml"
    monkeypatch.chdir(tree)
    items = await collect(DirectorySource(Path(".")))
    assert [item.source for item in items] == EXPECTED_ORDER


def test_iter_manifest_paths_matches_the_source_order(tree: Path) -> None:
    paths = list(iter_manifest_paths(tree))
    assert paths == [tree / rel for rel in EXPECTED_ORDER if "#" not in rel] + [tree / "list.json"]


async def test_duplicate_names_are_invalid_and_name_both_places(tmp_path: Path) -> None:
    write(tmp_path / "a.json", {"name": "x", "cu_number": 2})
    write(tmp_path / "b.json", {"name": "x", "cu_number": 4})
    write(tmp_path / "c.yaml", "- name: y\n- name: x\n- name: y\n")
    items = await collect(DirectorySource(tmp_path))
    assert [type(item) for item in items] == [
        JobSpec,
        InvalidManifest,
        JobSpec,
        InvalidManifest,
        InvalidManifest,
    ]
    a, b, c0, c1, c2 = (item.source for item in items)
    assert isinstance(items[1], InvalidManifest)
    assert items[1].error == f'{b}: name: duplicate job name "x" (first defined in {a})'
    assert items[1].name == "x"
    assert isinstance(items[3], InvalidManifest)
    assert items[3].error == f'{c1}: name: duplicate job name "x" (first defined in {a})'
    assert isinstance(items[4], InvalidManifest)
    assert items[4].error == f'{c2}: name: duplicate job name "y" (first defined in {c0})'
    assert c2 == f"{tmp_path}/c.yaml#2"


async def test_invalid_manifests_are_yielded_in_place(tmp_path: Path) -> None:
    write(tmp_path / "1.json", "{broken")
    write(tmp_path / "2.json", {"name": "ok"})
    items = await collect(DirectorySource(tmp_path))
    assert [type(item) for item in items] == [InvalidManifest, JobSpec]
    assert isinstance(items[0], InvalidManifest)
    assert items[0].error.startswith(f"{tmp_path}/1.json: invalid JSON at line 1, column 2")


async def test_files_are_read_when_reached_not_up_front(tmp_path: Path) -> None:
    write(tmp_path / "a.json", {"name": "a"})
    write(tmp_path / "b.json", {"name": "b"})
    items = DirectorySource(tmp_path).items()
    first = await anext(items)
    assert first.name == "a"
    (tmp_path / "b.json").write_bytes(orjson.dumps({"name": "b-changed"}))
    second = await anext(items)
    assert second.name == "b-changed"
    with pytest.raises(StopAsyncIteration):
        await anext(items)


async def test_the_event_loop_keeps_running_while_reading(tmp_path: Path) -> None:
    for index in range(200):
        write(tmp_path / f"{index:03}.json", {"name": f"j{index}"})
    ticks = 0
    ticks_seen: list[int] = []

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    task = asyncio.create_task(ticker())
    async for _ in DirectorySource(tmp_path).items():
        ticks_seen.append(ticks)
    task.cancel()
    assert len(ticks_seen) == 200
    assert ticks_seen[-1] >= 5  # the ticker ran several times during one pass, without awaits


def test_missing_root_or_a_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        DirectorySource(tmp_path / "nope")
    write(tmp_path / "file.json", {"name": "f"})
    with pytest.raises(ConfigError, match="is not a directory"):
        DirectorySource(tmp_path / "file.json")
    with pytest.raises(ConfigError, match="does not exist"):
        list(iter_manifest_paths(tmp_path / "nope"))


async def test_root_removed_after_construction_is_a_config_error(tmp_path: Path) -> None:
    root = tmp_path / "gone"
    root.mkdir()
    source = DirectorySource(root)
    root.rmdir()
    with pytest.raises(ConfigError, match="does not exist"):
        await collect(source)


async def test_finish_leaves_the_files_alone(tmp_path: Path) -> None:
    write(tmp_path / "a.json", {"name": "a"})
    source = DirectorySource(tmp_path)
    (item,) = await collect(source)
    await source.finish(item, JobResult(source=item.source, name="a", outcome=Outcome.CREATED))
    assert (tmp_path / "a.json").exists()
    assert [i.source for i in await collect(source)] == [item.source]


async def test_example_manifests_folder() -> None:
    items = await collect(DirectorySource(REPO / "examples" / "manifests"))
    assert all(isinstance(item, JobSpec) for item in items)
    assert len(items) >= 12
    assert any(item.source.endswith("team-payments/refund-monitor.yaml") for item in items)
    assert any(item.source.endswith("log-etl-jobs.yaml#2") for item in items)


def test_the_first_chunk_is_short_so_the_first_requests_leave_early() -> None:
    paths: list[str | _Unreadable] = [f"m/{i:04d}.json" for i in range(300)]
    chunks = list(_chunks(iter(paths), 256, first=32))
    assert [len(chunk) for chunk in chunks] == [32, 256, 12]
    assert [p for chunk in chunks for p in chunk] == paths


async def test_unreadable_entries_are_reported_as_read_and_counted_alike(tmp_path: Path) -> None:
    write(tmp_path / "good.json", {"name": "good"})
    problems = odd_entries(tmp_path)
    items = [item async for item in DirectorySource(tmp_path).items()]
    assert [item.name for item in items if isinstance(item, JobSpec)] == ["good"]
    found = {
        Path(item.source).name: item.error.removeprefix(f"{item.source}: ")
        for item in items
        if isinstance(item, InvalidManifest)
    }
    assert found == problems
    # What a run counts for its progress bar before it starts: the same entries.
    assert len(list(iter_manifest_paths(tmp_path))) == len(items)

"""batchsub.files on real files: atomic replacement, symlinks kept, devices written in place."""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

import pytest

from batchsub.errors import OutputError
from batchsub.files import STDOUT, atomic_file, check_output, is_stdout, open_output
from tests.fs_support import unwritable


def write(path: Path, data: bytes) -> None:
    with open_output(path, "--report") as out:
        out.write(data)


def test_a_regular_file_is_replaced_whole_and_private(tmp_path: Path) -> None:
    target = tmp_path / "r.json"
    target.write_bytes(b"old")
    write(target, b"new")
    assert target.read_bytes() == b"new"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert sorted(os.listdir(tmp_path)) == ["r.json"]  # no temporary file left


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "r.json"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_file(target) as out:
        out.write(b"half")
        raise RuntimeError("stopped midway")
    assert target.read_bytes() == b"old"
    assert sorted(os.listdir(tmp_path)) == ["r.json"]


def test_symlinks_stay_symlinks_and_their_final_target_is_replaced(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "links").mkdir()
    (tmp_path / "real" / "r.json").write_bytes(b"old")
    (tmp_path / "links" / "second").symlink_to("../real/r.json")  # relative, another folder
    (tmp_path / "first").symlink_to(tmp_path / "links" / "second")
    (tmp_path / "folder-link").symlink_to("real", target_is_directory=True)
    for named in (tmp_path / "first", tmp_path / "folder-link" / "r.json"):
        write(named, named.name.encode())
        assert (tmp_path / "real" / "r.json").read_bytes() == named.name.encode()
    assert (tmp_path / "first").is_symlink() and (tmp_path / "links" / "second").is_symlink()
    assert (tmp_path / "folder-link").is_symlink()
    assert sorted(os.listdir(tmp_path / "real")) == ["r.json"]


def test_a_dangling_symlink_gets_its_target_created(tmp_path: Path) -> None:
    (tmp_path / "link").symlink_to("made.json")
    write(tmp_path / "link", b"{}")
    assert (tmp_path / "link").is_symlink() and (tmp_path / "made.json").read_bytes() == b"{}"


def test_a_fifo_is_written_in_place(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_bytes()), daemon=True)
    reader.start()
    write(fifo, b"through the pipe")
    reader.join(timeout=10)
    assert got == [b"through the pipe"]
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)


@pytest.mark.skipif(os.geteuid() != 0, reason="mknod of a character device needs root")
def test_a_character_device_is_written_in_place_not_replaced(tmp_path: Path) -> None:
    device = tmp_path / "null"
    os.mknod(device, stat.S_IFCHR | 0o666, os.makedev(1, 3))  # the kernel's /dev/null
    (tmp_path / "null-link").symlink_to(device)
    write(device, b"gone")
    write(tmp_path / "null-link", b"gone")
    assert stat.S_ISCHR(os.lstat(device).st_mode)
    assert (tmp_path / "null-link").is_symlink()


def test_a_path_through_proc_writes_that_open_file(tmp_path: Path) -> None:
    # /dev/stdout leads to /proc/self/fd/1: its "target" is an open file of this process.
    log = tmp_path / "log.txt"
    with log.open("ab") as held:
        held.write(b"first line\n")
        held.flush()
        (tmp_path / "fd-link").symlink_to(f"/proc/self/fd/{held.fileno()}")
        write(tmp_path / "fd-link", b"report\n")
    assert log.read_bytes() == b"first line\nreport\n"  # added to, not replaced
    assert (tmp_path / "fd-link").is_symlink()


def test_dash_and_our_own_stdout_write_standard_output(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    write(STDOUT, b"dash\n")
    (tmp_path / "out-link").symlink_to("/proc/self/fd/1")
    assert is_stdout(STDOUT) and is_stdout(tmp_path / "out-link")
    write(tmp_path / "out-link", b"link\n")
    assert capfd.readouterr().out == "dash\nlink\n"
    assert not is_stdout(tmp_path / "r.json") and not is_stdout(None)


def test_what_cannot_be_written_is_refused_at_once_in_one_line(tmp_path: Path) -> None:
    (tmp_path / "a-folder").mkdir()
    (tmp_path / "loop").symlink_to("loop")
    cases = {
        tmp_path / "a-folder": "cannot write it: Is a directory",
        tmp_path / "missing" / "r.json": f"directory {tmp_path / 'missing'} does not exist",
        tmp_path / "loop": "cannot write it: Too many levels of symbolic links",
    }
    for named, expected in cases.items():
        with pytest.raises(OutputError) as caught:
            check_output(named, "--report")
        assert str(caught.value) == f"--report {named}: {expected}"
    locked = tmp_path / "locked"
    locked.mkdir()
    with unwritable(locked), pytest.raises(OutputError, match="cannot write it: "):
        check_output(locked / "r.json", "--report")
    check_output(tmp_path / "r.json", "--report")
    assert sorted(os.listdir(tmp_path)) == ["a-folder", "locked", "loop"]  # the probe is gone

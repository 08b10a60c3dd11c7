"""Atomic writes: normal permissions, fsync of the file and its directory, nothing left behind on failure."""

from __future__ import annotations

import os
import stat

import pytest

from quala.io import write_json_atomic, write_text_atomic


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_atomic_write_keeps_the_umask_mode(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        write_text_atomic(tmp_path / "a.txt", "hello")
        assert stat.S_IMODE((tmp_path / "a.txt").stat().st_mode) == mode
        # the same as a plain open() under this umask (the reference)
        (tmp_path / "plain.txt").write_text("x")
        assert stat.S_IMODE((tmp_path / "plain.txt").stat().st_mode) == mode
    finally:
        os.umask(old)


def test_atomic_write_fsyncs_file_and_directory(tmp_path, monkeypatch):
    synced = []
    real = os.fsync

    def spy(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        return real(fd)

    monkeypatch.setattr(os, "fsync", spy)
    write_json_atomic(tmp_path / "out.json", {"a": 1})
    assert len(synced) == 2
    assert synced[0].startswith(str(tmp_path / ".out.json."))  # the temporary file, before the rename
    assert synced[1] == str(tmp_path)  # then the directory that holds the new name
    assert (tmp_path / "out.json").read_text() == '{\n  "a": 1\n}\n'


def test_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    from quala.io import atomic_path

    write_text_atomic(tmp_path / "keep.txt", "old")
    with pytest.raises(RuntimeError), atomic_path(tmp_path / "keep.txt") as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed")
    assert (tmp_path / "keep.txt").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt"]

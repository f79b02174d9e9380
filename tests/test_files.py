"""`write_atomic` gives new files the usual permissions without touching the process umask (which races with
other threads: reading the umask means setting it)."""

from __future__ import annotations

import os
import stat

import pytest

from caa_eval.files import write_atomic


@pytest.mark.skipif(os.name != "posix", reason="file modes and umask are POSIX")
def test_write_atomic_respects_the_umask_without_calling_umask(tmp_path, monkeypatch):
    old = os.umask(0o027)
    try:

        def forbidden(mask):
            raise AssertionError("write_atomic must not change the process umask")

        monkeypatch.setattr(os, "umask", forbidden)
        path = write_atomic(tmp_path / "a" / "out.json", "{}")
        monkeypatch.undo()
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~0o027
        assert path.read_text() == "{}"
        assert [p.name for p in path.parent.iterdir()] == ["out.json"]  # no temp file left
    finally:
        os.umask(old)

"""`caa-eval data download` against a local HTTP mirror of ../shared (no network): verified, resumable, and
a corrupted file is rejected and not kept."""

from __future__ import annotations

import functools
import http.server
import os
import threading
from pathlib import Path

import pytest

from caa_eval import cli, data, download
from caa_eval._data_facts import CAA_FILES, MMLU_FILES
from caa_eval.errors import CAAEvalError


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:  # keep pytest output clean
        pass


@pytest.fixture()
def serve():
    """Serve a folder on 127.0.0.1; returns a function folder -> base URL. Servers stop after the test."""
    servers = []

    def start(folder: Path) -> str:
        handler = functools.partial(_QuietHandler, directory=str(folder))
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.fixture()
def mirror(tmp_path, caa_data_dir, mmlu_dir) -> Path:
    """The mirror layout (`caa/<path>`, `mmlu/test/<file>`) pointing at the shared copies."""
    root = tmp_path / "mirror"
    root.mkdir()
    os.symlink(caa_data_dir, root / "caa")
    os.symlink(mmlu_dir, root / "mmlu")
    return root


def test_download_everything_and_find_it(tmp_path, serve, mirror, monkeypatch):
    monkeypatch.delenv(data.CAA_DATA_ENV, raising=False)
    monkeypatch.delenv(data.MMLU_DIR_ENV, raising=False)
    monkeypatch.setenv("CAA_EVAL_CACHE", str(tmp_path / "cache"))
    url = serve(mirror)
    paths = download.download(base_url=url, progress=False)
    assert len(paths) == len(CAA_FILES) + len(MMLU_FILES)
    # default destination is the user cache, where the tasks look last
    assert data.locate_caa_data().source == "cache"
    assert data.resolve_behaviour_pairs("refusal", "test") == data.default_caa_dir() / "test/refusal/test_dataset_ab.json"
    assert len(data.mmlu_subset_rows()) == 570
    assert set(download.verify_dir("caa", data.default_caa_dir()).values()) == {"ok"}
    assert not list(data.default_caa_dir().rglob("*.part"))


def test_corrupted_file_is_rejected_and_not_kept(tmp_path, serve, mmlu_dir):
    root = tmp_path / "bad-mirror"
    (root / "mmlu" / "test").mkdir(parents=True)
    for name in MMLU_FILES:
        os.symlink(mmlu_dir / "test" / name, root / "mmlu" / "test" / name)
    victim = root / "mmlu" / "test" / "virology_test.csv"
    victim.unlink()
    original = (mmlu_dir / "test" / "virology_test.csv").read_bytes()
    victim.write_bytes(original.replace(b"virus", b"vires", 1))  # same size, one byte changed
    dest = tmp_path / "dest"
    with pytest.raises(CAAEvalError, match=r"1 of 57 file\(s\) failed: .*virology_test.csv: got sha256 .*not kept"):
        download.download(["mmlu"], dest=dest, base_url=serve(root), progress=False)
    got = dest / "mmlu" / "test"
    assert not (got / "virology_test.csv").exists()
    assert not list(got.glob("*.part")) and not list(got.glob(".*"))
    assert len(list(got.glob("*_test.csv"))) == 56  # the good files are kept


def test_truncated_file_and_missing_file_are_reported(tmp_path, serve, caa_data_dir):
    root = tmp_path / "short-mirror"
    short, gone = "test/refusal/test_dataset_ab.json", "generate/hallucination/generate_dataset.json"
    for rel in CAA_FILES:
        (root / "caa" / rel).parent.mkdir(parents=True, exist_ok=True)
        if rel == short:
            (root / "caa" / rel).write_bytes((caa_data_dir / rel).read_bytes()[:100])
        elif rel != gone:
            os.symlink(caa_data_dir / rel, root / "caa" / rel)
    with pytest.raises(CAAEvalError) as err:
        download.download(["caa"], dest=tmp_path / "d", base_url=serve(root), progress=False)
    message = str(err.value)
    assert message.startswith(f"2 of {len(CAA_FILES)} file(s) failed")
    assert f"{short}: got 100 bytes" in message and f"{gone}: HTTP 404" in message
    assert not (tmp_path / "d" / "caa" / short).exists() and not (tmp_path / "d" / "caa" / gone).exists()
    assert len(list((tmp_path / "d").rglob("*.json"))) == len(CAA_FILES) - 2


def test_rerun_skips_verified_files_and_replaces_modified_ones(tmp_path, serve, mirror):
    url = serve(mirror)
    dest = tmp_path / "dest"
    download.download(["caa"], dest=dest, base_url=url, progress=False)
    target = dest / "caa" / "test/sycophancy/test_dataset_ab.json"
    target.write_text("tampered", encoding="utf-8")
    todo = [f for f in download.plan(["caa"], dest, url) if not download.is_valid(f)]
    assert [f.dest for f in todo] == [target]
    download.download(["caa"], dest=dest, base_url=url, progress=False)
    assert download.verify_dir("caa", dest / "caa")["test/sycophancy/test_dataset_ab.json"] == "ok"


def test_cli_download_and_status(tmp_path, serve, mirror, capsys, monkeypatch):
    dest = tmp_path / "dl"
    assert cli.main(["data", "download", "--base-url", serve(mirror), "--dest", str(dest), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert f"export CAA_EVAL_DATA_DIR={dest.resolve() / 'caa'}" in out
    monkeypatch.setenv(data.CAA_DATA_ENV, str(dest / "caa"))
    monkeypatch.setenv(data.MMLU_DIR_ENV, str(dest / "mmlu"))
    assert cli.main(["data", "status", "--verify"]) == 0
    assert "caa: " in capsys.readouterr().out
    (dest / "mmlu" / "test" / "anatomy_test.csv").write_text("x", encoding="utf-8")
    assert cli.main(["data", "status", "--verify"]) == 1
    assert "modified: anatomy_test.csv" in capsys.readouterr().out


def test_upstream_urls_are_pinned():
    files = download.plan()
    caa = next(f for f in files if f.dest.name == "test_dataset_ab.json")
    assert caa.url.startswith(f"https://raw.githubusercontent.com/nrimsky/CAA/{download.CAA_COMMIT}/datasets/test/")
    mmlu = next(f for f in files if f.dest.name == "anatomy_test.csv")
    assert mmlu.url == (
        f"https://raw.githubusercontent.com/HaeChan0305/MLILAB-FedLLM/{download.MMLU_COMMIT}/data/mmlu/test/anatomy_test.csv"
    )
    assert len(download.CAA_COMMIT) == len(download.MMLU_COMMIT) == 40

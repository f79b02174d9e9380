"""`caa-eval data download` against a local HTTP mirror (no network): verified, resumable, and a corrupted,
truncated or missing file is rejected and not kept. The failure cases run on small files of their own whose
digests stand in for the recorded ones; the end-to-end ones mirror the data found by conftest."""

from __future__ import annotations

import functools
import hashlib
import http.server
import os
import threading
from pathlib import Path

import pytest

from caa_eval import cli, data
from caa_eval.data import download
from caa_eval.data.facts import CAA_FILES, MMLU_FILES
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
    """The mirror layout (`caa/<path>`, `mmlu/test/<file>`) pointing at the data conftest found."""
    root = tmp_path / "mirror"
    (root / "mmlu").mkdir(parents=True)
    os.symlink(caa_data_dir, root / "caa")
    os.symlink(mmlu_dir, root / "mmlu" / "test")
    return root


def _fake_upstream(root: Path, monkeypatch, caa: int = 4, mmlu: int = 5) -> tuple[dict, dict]:
    """Small files in the mirror layout, recorded as the expected ones in place of the real facts."""
    facts: dict[str, dict] = {"caa": {}, "mmlu": {}}
    for kind, count, name in (("caa", caa, "test/b{k}/test_dataset_ab.json"), ("mmlu", mmlu, "s{k}_test.csv")):
        for k in range(count):
            rel = name.format(k=k)
            body = f"file {k} of {kind}: the virus that only a sha256 tells apart\n".encode() * (k + 1)
            path = root / ("caa" if kind == "caa" else "mmlu/test") / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(body)
            facts[kind][rel] = (len(body), hashlib.sha256(body).hexdigest())
    monkeypatch.setattr(download, "CAA_FILES", facts["caa"])
    monkeypatch.setattr(download, "MMLU_FILES", facts["mmlu"])
    return facts["caa"], facts["mmlu"]


def test_download_everything_and_find_it(tmp_path, serve, mirror, monkeypatch):
    monkeypatch.delenv(data.CAA_DATA_ENV, raising=False)
    monkeypatch.delenv(data.MMLU_DIR_ENV, raising=False)
    monkeypatch.setenv("CAA_EVAL_CACHE", str(tmp_path / "cache"))
    url = serve(mirror)
    paths = download.download(base_url=url, progress=False)
    assert len(paths) == len(CAA_FILES) + len(MMLU_FILES)
    # default destination is the user cache, where the tasks look last
    assert data.locate_caa_data().source == "cache" and data.locate_mmlu().source == "cache"
    assert (
        data.resolve_behaviour_pairs("refusal", "test") == data.default_caa_dir() / "test/refusal/test_dataset_ab.json"
    )
    assert len(data.mmlu_subset_rows()) == 570
    assert set(download.verify_dir("caa", data.default_caa_dir()).values()) == {"ok"}
    assert not list(data.default_caa_dir().rglob("*.part"))


def test_corrupted_file_is_rejected_and_not_kept(tmp_path, serve, monkeypatch):
    root = tmp_path / "bad-mirror"
    _, mmlu = _fake_upstream(root, monkeypatch)
    victim = root / "mmlu" / "test" / "s2_test.csv"
    victim.write_bytes(victim.read_bytes().replace(b"virus", b"vires", 1))  # same size, one byte changed
    dest = tmp_path / "dest"
    with pytest.raises(CAAEvalError, match=rf"1 of {len(mmlu)} file\(s\) failed: .*s2_test.csv: got sha256 .*not kept"):
        download.download(["mmlu"], dest=dest, base_url=serve(root), progress=False)
    got = dest / "mmlu" / "test"
    assert not (got / "s2_test.csv").exists()
    assert not list(got.glob("*.part")) and not list(got.glob(".*"))
    assert len(list(got.glob("*_test.csv"))) == len(mmlu) - 1  # the good files are kept


def test_truncated_file_and_missing_file_are_reported(tmp_path, serve, monkeypatch):
    root = tmp_path / "short-mirror"
    caa, _ = _fake_upstream(root, monkeypatch)
    short, gone = "test/b1/test_dataset_ab.json", "test/b3/test_dataset_ab.json"
    (root / "caa" / short).write_bytes((root / "caa" / short).read_bytes()[:10])
    (root / "caa" / gone).unlink()
    with pytest.raises(CAAEvalError) as err:
        download.download(["caa"], dest=tmp_path / "d", base_url=serve(root), progress=False)
    message = str(err.value)
    assert message.startswith(f"2 of {len(caa)} file(s) failed") and "\n" not in message
    assert f"{short}: got 10 bytes" in message and f"{gone}: HTTP 404" in message
    assert not (tmp_path / "d" / "caa" / short).exists() and not (tmp_path / "d" / "caa" / gone).exists()
    assert len(list((tmp_path / "d").rglob("*.json"))) == len(caa) - 2


def test_rerun_skips_verified_files_and_replaces_modified_ones(tmp_path, serve, monkeypatch):
    root = tmp_path / "mirror"
    _fake_upstream(root, monkeypatch)
    url = serve(root)
    dest = tmp_path / "dest"
    download.download(["caa"], dest=dest, base_url=url, progress=False)
    target = dest / "caa" / "test/b2/test_dataset_ab.json"
    target.write_text("tampered", encoding="utf-8")
    todo = [f for f in download.plan(["caa"], dest, url) if not download.is_valid(f)]
    assert [f.dest for f in todo] == [target]
    download.download(["caa"], dest=dest, base_url=url, progress=False)
    assert download.verify_dir("caa", dest / "caa")["test/b2/test_dataset_ab.json"] == "ok"


def test_verify_dir_and_plan_reject_unknown_datasets(tmp_path):
    with pytest.raises(CAAEvalError, match="unknown dataset 'glue'; choose from caa, mmlu"):
        download.plan(["glue"])
    with pytest.raises(CAAEvalError, match="unknown dataset 'glue'"):
        download.verify_dir("glue", tmp_path)
    assert set(download.verify_dir("mmlu", tmp_path).values()) == {"missing"}


def test_cli_download_and_status(tmp_path, serve, mirror, capsys, monkeypatch):
    dest = tmp_path / "dl"
    assert cli.main(["data", "download", "--base-url", serve(mirror), "--dest", str(dest), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert f"export CAA_EVAL_DATA_DIR={dest.resolve() / 'caa'}" in out
    monkeypatch.setenv(data.CAA_DATA_ENV, str(dest / "caa"))
    monkeypatch.setenv(data.MMLU_DIR_ENV, str(dest / "mmlu"))  # the parent of test/ is accepted
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


def test_cli_status_without_data_says_how_to_get_it(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv(data.CAA_DATA_ENV, raising=False)
    monkeypatch.delenv(data.MMLU_DIR_ENV, raising=False)
    monkeypatch.setenv("CAA_EVAL_CACHE", str(tmp_path / "empty"))
    assert cli.main(["data", "status"]) == 1
    out = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in out] == ["caa", "mmlu"]
    assert all("missing: " in line and "caa-eval data download" in line for line in out)

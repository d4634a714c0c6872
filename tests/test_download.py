"""Download robustness against a local HTTP server that misbehaves on request.

Why a real server: resuming, Range handling and cut connections only show up over real sockets.
Everything runs on 127.0.0.1; no test touches the internet.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import socket
import threading
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from regbench.data import datasets
from regbench.data.datasets import ctspine1k, deepfluoro, ljubljana
from regbench.data.datasets.ctspine1k import case_sources
from regbench.data.download import (
    ChecksumError,
    DownloadError,
    Source,
    download,
    fetch,
    unpack_member,
)
from regbench.errors import InputError

SIZE = 300_000
FAST = {"timeout": 2.0, "backoff": 0.01, "progress": False}


@dataclass
class ServerState:
    """What the handler serves and how it misbehaves; also what it saw."""

    files: dict[str, bytes] = field(default_factory=dict)
    cut_after: int | None = None  # body bytes sent before dropping the connection
    cuts_left: int = 0  # how many responses are cut
    ignore_range: bool = False
    corrupt: bool = False  # serve flipped bytes (same length)
    fail_status: list[int] = field(default_factory=list)  # statuses to answer first, one each
    content_type: str = "application/octet-stream"
    requests: list[dict[str, object]] = field(default_factory=list)
    # path -> (location, extra headers): answered with a 302 (as a hub redirecting to its CDN)
    redirects: dict[str, tuple[str, dict[str, str]]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)


class Handler(BaseHTTPRequestHandler):
    """Serves ``state.files`` with Range support, and can cut, ignore Range, corrupt or fail."""

    server: _Server

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - keep tests quiet
        pass

    def do_GET(self) -> None:  # noqa: N802 - http.server naming
        state = self.server.state
        rng = self.headers.get("Range")
        with state.lock:
            entry: dict[str, object] = {"path": self.path, "range": rng}
            state.requests.append(entry)
            forced = state.fail_status.pop(0) if state.fail_status else None
            cut = state.cut_after if state.cuts_left > 0 else None
            if cut is not None:
                state.cuts_left -= 1
        if forced is None and self.path in state.redirects:
            location, extra = state.redirects[self.path]
            entry["status"] = 302
            self.send_response(302)
            self.send_header("Location", location)
            for key, value in extra.items():
                self.send_header(key, value)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        data = state.files.get(self.path)
        if forced is not None or data is None:
            entry["status"] = forced or 404
            self.send_error(forced or 404)
            return
        if state.corrupt:
            data = bytes(b ^ 0xFF for b in data[:16]) + data[16:]
        start = 0
        match = re.fullmatch(r"bytes=(\d+)-", rng or "")
        if match and not state.ignore_range:
            start = int(match.group(1))
            if start >= len(data):
                entry["status"] = 416
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            entry["status"] = 206
        else:
            self.send_response(200)
            entry["status"] = 200
        body = data[start:]
        self.send_header("Content-Type", state.content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        if cut is not None and cut < len(body):
            self.wfile.write(body[:cut])
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)  # simulate a dropped transfer
            self.close_connection = True
            return
        self.wfile.write(body)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    state: ServerState


@dataclass
class Served:
    state: ServerState
    base: str
    data: bytes

    @property
    def url(self) -> str:
        return f"{self.base}/file.bin"

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


@pytest.fixture
def served() -> Iterator[Served]:
    data = os.urandom(SIZE)
    state = ServerState(files={"/file.bin": data})
    server = _Server(("127.0.0.1", 0), Handler)
    server.state = state
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.daemon = True
    thread.start()
    try:
        yield Served(state, f"http://127.0.0.1:{server.server_address[1]}", data)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def _closed_port_url() -> str:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/file.bin"


def _part(dest: Path) -> Path:
    return dest.with_name(dest.name + ".part")


def test_full_download_writes_file_and_records(served: Served, tmp_path: Path) -> None:
    dest = tmp_path / "sub" / "file.bin"
    out = download(served.url, dest, **FAST)
    assert out == dest
    assert dest.read_bytes() == served.data
    assert not _part(dest).exists()
    assert (tmp_path / "sub" / "file.bin.sha256").read_text() == f"{served.digest}  file.bin\n"
    meta = json.loads((tmp_path / "sub" / "file.bin.source.json").read_text())
    assert meta["url"] == served.url
    assert meta["size"] == SIZE
    assert meta["sha256"] == served.digest
    assert meta["date"]
    assert meta["origin"] == "downloaded"
    assert [r["range"] for r in served.state.requests] == [None]


def test_pinned_checksum_and_size_accepted(served: Served, tmp_path: Path) -> None:
    dest = tmp_path / "file.bin"
    download(served.url, dest, sha256=served.digest.upper(), expected_size=SIZE, **FAST)
    assert dest.read_bytes() == served.data


def test_resume_after_interrupted_transfer(served: Served, tmp_path: Path) -> None:
    dest = tmp_path / "file.bin"
    served.state.cut_after, served.state.cuts_left = 100_000, 1
    with pytest.raises(DownloadError) as err:
        download(served.url, dest, retries=0, **FAST)
    assert not isinstance(err.value, ChecksumError)
    assert not dest.exists()
    assert _part(dest).stat().st_size == 100_000
    assert "resumed" in str(err.value)

    download(served.url, dest, sha256=served.digest, **FAST)
    assert dest.read_bytes() == served.data
    assert not _part(dest).exists()
    last = served.state.requests[-1]
    assert last["range"] == "bytes=100000-"
    assert last["status"] == 206


def test_resume_within_one_call(served: Served, tmp_path: Path) -> None:
    dest = tmp_path / "file.bin"
    served.state.cut_after, served.state.cuts_left = 50_000, 2
    download(served.url, dest, retries=2, **FAST)
    assert dest.read_bytes() == served.data
    ranges = [r["range"] for r in served.state.requests]
    assert ranges == [None, "bytes=50000-", "bytes=100000-"]


def test_server_ignoring_range_restarts(served: Served, tmp_path: Path) -> None:
    dest = tmp_path / "file.bin"
    served.state.cut_after, served.state.cuts_left = 120_000, 1
    with pytest.raises(DownloadError):
        download(served.url, dest, retries=0, **FAST)
    assert _part(dest).exists()
    served.state.ignore_range = True
    download(served.url, dest, sha256=served.digest, **FAST)
    assert dest.read_bytes() == served.data
    last = served.state.requests[-1]
    assert last["range"] == "bytes=120000-"
    assert last["status"] == 200


def test_stale_part_discarded_when_range_ignored(served: Served, tmp_path: Path) -> None:
    dest = tmp_path / "file.bin"
    _part(dest).write_bytes(b"\0" * 1000)  # garbage that is not a prefix of the file
    served.state.ignore_range = True
    download(served.url, dest, **FAST)
    assert dest.read_bytes() == served.data


def test_complete_part_finishes_on_416(served: Served, tmp_path: Path) -> None:
    dest = tmp_path / "file.bin"
    _part(dest).write_bytes(served.data)  # e.g. killed between the last byte and the rename
    download(served.url, dest, sha256=served.digest, **FAST)
    assert dest.read_bytes() == served.data
    assert served.state.requests[-1]["status"] == 416


def test_checksum_mismatch_deletes_bad_bytes(served: Served, tmp_path: Path) -> None:
    dest = tmp_path / "file.bin"
    served.state.corrupt = True
    with pytest.raises(ChecksumError) as err:
        download(served.url, dest, sha256=served.digest, **FAST)
    msg = str(err.value)
    bad = hashlib.sha256(bytes(b ^ 0xFF for b in served.data[:16]) + served.data[16:]).hexdigest()
    assert served.url in msg and served.digest in msg and bad in msg
    assert (err.value.expected, err.value.actual) == (served.digest, bad)
    assert not dest.exists()
    assert not _part(dest).exists()
    assert not (tmp_path / "file.bin.sha256").exists()


def test_checksum_mismatch_after_resume_deletes_part(served: Served, tmp_path: Path) -> None:
    dest = tmp_path / "file.bin"
    served.state.cut_after, served.state.cuts_left = 100_000, 1
    served.state.corrupt = True  # the prefix on disk is wrong: only the digest can tell
    with pytest.raises(DownloadError):
        download(served.url, dest, retries=0, **FAST)
    served.state.corrupt = False
    with pytest.raises(ChecksumError):
        download(served.url, dest, sha256=served.digest, **FAST)
    assert not dest.exists() and not _part(dest).exists()
    download(served.url, dest, sha256=served.digest, **FAST)  # a clean retry then succeeds
    assert dest.read_bytes() == served.data


def test_expected_size_mismatch_is_refused(served: Served, tmp_path: Path) -> None:
    dest = tmp_path / "file.bin"
    with pytest.raises(ChecksumError, match="bytes"):
        download(served.url, dest, expected_size=SIZE + 1, **FAST)
    assert not dest.exists() and not _part(dest).exists()


def test_unreachable_host_fails_fast_with_manual_hint(tmp_path: Path) -> None:
    url = _closed_port_url()
    dest = tmp_path / "data" / "file.bin"
    t0 = time.monotonic()
    with pytest.raises(DownloadError) as err:
        download(url, dest, retries=2, **FAST)
    assert time.monotonic() - t0 < 5
    assert not isinstance(err.value, ChecksumError)
    msg = str(err.value)
    assert url in msg
    assert str(dest.absolute()) in msg
    assert "3 attempts" in msg


def test_http_404_is_not_retried(served: Served, tmp_path: Path) -> None:
    url = f"{served.base}/missing.bin"
    dest = tmp_path / "missing.bin"
    with pytest.raises(DownloadError) as err:
        download(url, dest, retries=3, **FAST)
    assert "404" in str(err.value) and url in str(err.value) and str(dest) in str(err.value)
    assert len(served.state.requests) == 1


def test_transient_http_error_is_retried(served: Served, tmp_path: Path) -> None:
    dest = tmp_path / "file.bin"
    served.state.fail_status = [503]
    download(served.url, dest, retries=1, **FAST)
    assert dest.read_bytes() == served.data
    assert [r["status"] for r in served.state.requests] == [503, 200]


def test_html_page_instead_of_file_is_rejected(served: Served, tmp_path: Path) -> None:
    dest = tmp_path / "file.bin"
    served.state.content_type = "text/html; charset=utf-8"
    with pytest.raises(DownloadError, match="web page"):
        download(served.url, dest, retries=3, **FAST)
    assert not dest.exists()
    assert len(served.state.requests) == 1


def test_existing_verified_file_is_not_downloaded_again(served: Served, tmp_path: Path) -> None:
    dest = tmp_path / "file.bin"
    download(served.url, dest, **FAST)
    served.state.requests.clear()
    assert download(served.url, dest, sha256=served.digest, **FAST) == dest
    assert download(served.url, dest, **FAST) == dest
    assert served.state.requests == []


def test_hand_placed_file_is_accepted_and_recorded(served: Served, tmp_path: Path) -> None:
    dest = tmp_path / "file.bin"
    dest.write_bytes(served.data)
    assert download(served.url, dest, sha256=served.digest, **FAST) == dest
    assert served.state.requests == []
    assert (tmp_path / "file.bin.sha256").read_text().split() == [served.digest, "file.bin"]
    meta = json.loads((tmp_path / "file.bin.source.json").read_text())
    assert meta["origin"] == "placed by hand" and meta["sha256"] == served.digest


def test_hand_placed_wrong_file_is_refused_but_kept(served: Served, tmp_path: Path) -> None:
    dest = tmp_path / "file.bin"
    dest.write_bytes(b"not the dataset")
    with pytest.raises(ChecksumError, match="placed by hand"):
        download(served.url, dest, sha256=served.digest, **FAST)
    assert dest.read_bytes() == b"not the dataset"  # the user's file is never deleted
    assert not (tmp_path / "file.bin.sha256").exists()
    assert served.state.requests == []


def test_corrupted_existing_file_is_detected(served: Served, tmp_path: Path) -> None:
    dest = tmp_path / "file.bin"
    download(served.url, dest, **FAST)
    raw = bytearray(dest.read_bytes())
    raw[SIZE // 2] ^= 0x01  # same size, one bit flipped
    dest.write_bytes(bytes(raw))
    served.state.requests.clear()
    with pytest.raises(ChecksumError, match="no longer matches") as err:
        download(served.url, dest, **FAST)
    assert err.value.expected == served.digest
    assert served.state.requests == []


def test_source_object_and_directory_dest(served: Served, tmp_path: Path) -> None:
    src = Source("toy", served.url, "toy.bin", size=SIZE, sha256=served.digest, licence="none")
    out = download(src, tmp_path, **FAST)
    assert out == tmp_path / "toy.bin"
    assert out.read_bytes() == served.data


def _zip_bytes(member: str, payload: bytes) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("LICENSE", "terms")
        zf.writestr(member, payload)
    return buf.getvalue()


def test_unpack_member_is_atomic_and_recorded(tmp_path: Path) -> None:
    payload = os.urandom(10_000)
    archive = tmp_path / "a.zip"
    archive.write_bytes(_zip_bytes("inner/data.h5", payload))
    out = unpack_member(archive, "data.h5", tmp_path / "data.h5", progress=False)
    assert out.read_bytes() == payload
    digest = hashlib.sha256(payload).hexdigest()
    assert (tmp_path / "data.h5.sha256").read_text().split()[0] == digest
    with pytest.raises(DownloadError, match="holds no single"):
        unpack_member(archive, "absent.h5", tmp_path / "absent.h5", progress=False)
    assert not (tmp_path / "absent.h5").exists()


def test_unpack_member_damaged_archive(tmp_path: Path) -> None:
    payload = b"x" * 5000
    raw = bytearray(_zip_bytes("data.h5", payload))
    archive = tmp_path / "a.zip"
    with zipfile.ZipFile(io.BytesIO(bytes(raw))) as zf:
        info = zf.getinfo("data.h5")
    pos = info.header_offset + 30 + len(info.filename) + len(info.extra) + 10
    raw[pos] ^= 0xFF  # damage the compressed data: CRC or inflate must fail
    archive.write_bytes(bytes(raw))
    with pytest.raises(ChecksumError, match="damaged"):
        unpack_member(archive, "data.h5", tmp_path / "data.h5", progress=False)
    assert not (tmp_path / "data.h5").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["a.zip"]


def test_fetch_downloads_and_unpacks(served: Served, tmp_path: Path) -> None:
    payload = os.urandom(20_000)
    served.state.files["/toy.zip"] = _zip_bytes("toy.h5", payload)
    src = Source(
        "toy", f"{served.base}/toy.zip", "toy.zip", unpack="zip", member="toy.h5", licence="x"
    )
    out = fetch(src, tmp_path, **FAST)
    assert out == tmp_path / "toy.h5"
    assert out.read_bytes() == payload
    assert not (tmp_path / "toy.zip").exists()  # archive removed after a verified unpack
    meta = json.loads((tmp_path / "toy.h5.source.json").read_text())
    assert meta["url"] == src.url and meta["member"] == "toy.h5" and meta["archive_sha256"]
    served.state.requests.clear()
    assert fetch(src, tmp_path, **FAST) == out
    assert served.state.requests == []


def test_fetch_keeps_hand_placed_archive(tmp_path: Path) -> None:
    payload = os.urandom(5000)
    (tmp_path / "toy.zip").write_bytes(_zip_bytes("toy.h5", payload))
    src = Source("toy", _closed_port_url(), "toy.zip", unpack="zip", member="toy.h5")
    assert fetch(src, tmp_path, **FAST).read_bytes() == payload
    assert (tmp_path / "toy.zip").exists()


def test_fetch_offline_names_both_places(tmp_path: Path) -> None:
    src = Source("toy", _closed_port_url(), "toy.zip", unpack="zip", member="toy.h5")
    with pytest.raises(DownloadError) as err:
        fetch(src, tmp_path, retries=0, **FAST)
    msg = str(err.value)
    assert src.url in msg and str(tmp_path / "toy.zip") in msg and str(tmp_path / "toy.h5") in msg


def test_ctspine1k_case_download(served: Served, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(
        ctspine1k, "URL_TEMPLATE", served.base + "/{repo}/{revision}/{kind}/{subset}/{file}"
    )
    vol, seg = os.urandom(2000), os.urandom(1000)
    prefix = f"/{ctspine1k.REPO}/{ctspine1k.REVISION}"
    served.state.files[f"{prefix}/volumes/MSD-T10/liver_0.nii.gz"] = vol
    served.state.files[f"{prefix}/labels/MSD-T10/liver_0_seg.nii.gz"] = seg
    root = tmp_path / "ctspine1k"
    dataset = datasets.get("ctspine1k")
    for file in dataset.raw_files("liver_0", {}):
        dataset.download(file, root, progress=False)
    assert (root / "volumes" / "liver_0.nii.gz").read_bytes() == vol
    assert (root / "labels" / "liver_0_seg.nii.gz").read_bytes() == seg


COMMIT_A, COMMIT_B = "a" * 40, "b" * 40


def _hub(served: Served, monkeypatch) -> None:
    """A hub at 127.0.0.1 that resolves its `main` branch to COMMIT_A on the redirect to its
    CDN (as huggingface.co does), and serves COMMIT_A's files under their commit too."""
    monkeypatch.setattr(
        ctspine1k, "URL_TEMPLATE", served.base + "/{repo}/{revision}/{kind}/{subset}/{file}"
    )
    for kind, file in [("volumes", "liver_0.nii.gz"), ("labels", "liver_0_seg.nii.gz")]:
        data = os.urandom(1500)
        served.state.files[f"/cdn/{file}"] = data
        served.state.files[f"/{ctspine1k.REPO}/{COMMIT_A}/{kind}/MSD-T10/{file}"] = data
        served.state.redirects[f"/{ctspine1k.REPO}/main/{kind}/MSD-T10/{file}"] = (
            f"{served.base}/cdn/{file}",
            {"X-Repo-Commit": COMMIT_A},
        )


def test_ctspine1k_first_download_locks_the_commit(served: Served, tmp_path: Path, monkeypatch):
    _hub(served, monkeypatch)
    root, dataset = tmp_path / "ctspine1k", datasets.get("ctspine1k")
    volume, labels = dataset.raw_files("liver_0", {})
    dataset.download(volume, root, revision="main", progress=False)
    lock = json.loads((root / ctspine1k.REVISION_LOCK).read_text())
    assert lock["commit"] == COMMIT_A and lock["revision"] == "main"
    source = json.loads((root / "volumes" / "liver_0.nii.gz.source.json").read_text())
    assert source["repo_commit"] == COMMIT_A
    # The next file is asked for at the locked commit, not at the branch.
    dataset.download(labels, root, revision="main", progress=False)
    paths = [r["path"] for r in served.state.requests]
    assert paths[-1] == f"/{ctspine1k.REPO}/{COMMIT_A}/labels/MSD-T10/liver_0_seg.nii.gz"
    assert (root / "labels" / "liver_0_seg.nii.gz").is_file()


def test_ctspine1k_pin_other_than_lock_is_refused(served: Served, tmp_path: Path, monkeypatch):
    _hub(served, monkeypatch)
    root, dataset = tmp_path / "ctspine1k", datasets.get("ctspine1k")
    volume, labels = dataset.raw_files("liver_0", {})
    dataset.download(volume, root, revision="main", progress=False)
    with pytest.raises(InputError, match=rf"{COMMIT_B}.*revision\.lock\.json.*{COMMIT_A}"):
        dataset.download(labels, root, revision=COMMIT_B, progress=False)
    assert not (root / "labels" / "liver_0_seg.nii.gz").exists()


def test_ctspine1k_host_answering_another_commit_is_refused(
    served: Served, tmp_path: Path, monkeypatch
):
    _hub(served, monkeypatch)
    file = "volumes/MSD-T10/liver_0.nii.gz"
    served.state.redirects[f"/{ctspine1k.REPO}/{COMMIT_B}/{file}"] = (
        f"{served.base}/cdn/liver_0.nii.gz",
        {"X-Repo-Commit": COMMIT_A},
    )
    root, dataset = tmp_path / "ctspine1k", datasets.get("ctspine1k")
    volume, _ = dataset.raw_files("liver_0", {})
    with pytest.raises(InputError, match=f"commit {COMMIT_A} for revision {COMMIT_B}"):
        dataset.download(volume, root, revision=COMMIT_B, progress=False)
    assert not (root / volume).exists() and not (root / ctspine1k.REVISION_LOCK).exists()
    assert not (root / f"{volume}.sha256").exists()


def test_ctspine1k_case_sources_urls() -> None:
    ids = ["liver_0.nii.gz", "HN_P001", "1.3.6.1.4.1.9328.50.4.0477", "volume-covid19-A-0377_ct"]
    sources = case_sources([*ids, "CTC-1018399231"])
    base = "https://huggingface.co/datasets/alexanderdann/CTSpine1K/resolve/main/raw_data"
    urls = [s.url for s in sources]
    assert urls[:2] == [
        f"{base}/volumes/MSD-T10/liver_0.nii.gz",
        f"{base}/labels/MSD-T10/liver_0_seg.nii.gz",
    ]
    assert urls[2] == f"{base}/volumes/HNSCC-3DCT-RT/HN_P001.nii.gz"
    assert urls[4] == f"{base}/volumes/COLONOG/1.3.6.1.4.1.9328.50.4.0477.nii.gz"
    assert urls[7] == f"{base}/labels/COVID-19/volume-covid19-A-0377_ct_seg.nii.gz"
    assert urls[8] == f"{base}/volumes/COLONOG/CTC-1018399231.nii.gz"
    assert sources[1].filename == "labels/liver_0_seg.nii.gz"
    assert all("CC BY-NC-SA" in s.licence for s in sources)
    assert len(case_sources(["COVID-19/x"], labels=False)) == 1
    with pytest.raises(ValueError, match="subset"):
        case_sources(["mystery_case"])


def test_sources_table_is_consistent() -> None:
    sources = {
        "deepfluoro": deepfluoro.SOURCE,
        "ljubljana": ljubljana.SOURCE,
        "ctspine1k-split": ctspine1k.SPLIT_SOURCE,
    }
    for key, src in sources.items():
        assert src.name == key
        assert src.url.startswith(("http://", "https://"))
        assert src.licence and src.homepage
        assert src.sha256 is None or re.fullmatch(r"[0-9a-f]{64}", src.sha256)
        assert (src.unpack is None) == (src.member is None)
    assert sources["deepfluoro"].member == "ipcai_2020_full_res_data.h5"
    assert "10.7281/T1/IFSXNV" in sources["deepfluoro"].url
    assert sources["ljubljana"].member == "ljubljana.h5"

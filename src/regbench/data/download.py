"""Resumable, verified downloads of raw data files; nothing here knows any dataset.

Raw data are GB-sized files on academic servers, file-sharing services and model hubs. Those
hosts drop connections, ignore Range requests, or answer with an HTML page instead of the file. A
pipeline must never mistake a truncated or wrong file for the real one, and on a machine without
internet access it must say exactly where the user can put the file by hand. Hence every download
here streams to ``<dest>.part``, resumes it, hashes while streaming, renames atomically only after
all checks pass, and records ``<dest>.sha256`` and ``<dest>.source.json`` beside the result.
The dataset modules describe their files as :class:`Source` objects at planning time, so this
module imports no pandas (the file writers are imported where they are used).
"""

from __future__ import annotations

import errno
import hashlib
import http.client
import json
import os
import re
import socket
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
import zlib
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any

from tqdm import tqdm

from regbench import __version__
from regbench.data.sources import RECORD_SUFFIX, Source, record_path

__all__ = [
    "RECORD_SUFFIX",
    "ChecksumError",
    "DownloadError",
    "discard",
    "Source",
    "download",
    "fetch",
    "record_path",
    "recorded_commit",
    "sha256_file",
    "unpack_member",
    "verify_existing",
]


class DownloadError(RuntimeError):
    """A file could not be fetched; the message names the URL and where to place it by hand."""


class ChecksumError(DownloadError):
    """Bytes on disk or from the server are not the expected ones (digest or size)."""

    def __init__(
        self,
        message: str,
        *,
        url: str | None = None,
        expected: str | None = None,
        actual: str | None = None,
    ) -> None:
        super().__init__(message)
        self.url = url
        self.expected = expected
        self.actual = actual


_RETRY_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
_LOCAL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EROFS, errno.EPERM})
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_CONTENT_RANGE = re.compile(r"^\s*bytes\s+(?:(\d+)-(\d+)|\*)/(\d+|\*)\s*$", re.IGNORECASE)


class _Retry(Exception):
    """A transient failure: worth another attempt (the .part is kept for resuming)."""


class _Fatal(Exception):
    """A failure another attempt will not fix (404, HTML page, unknown host)."""


# --------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------


def _sidecar(path: Path, suffix: str) -> Path:
    return path.with_name(path.name + suffix)


def _part_path(dest: Path) -> Path:
    return _sidecar(dest, ".part")


def _normalise_digest(digest: str | None) -> str | None:
    if digest is None:
        return None
    digest = digest.strip().lower()
    if not _HEX64.match(digest):
        raise ValueError(f"not a SHA-256 hex digest: {digest!r}")
    return digest


def _now() -> str:
    return datetime.now(UTC).replace(microsecond=0).isoformat()


def sha256_file(path: str | Path, *, chunk: int = 1 << 20, progress: bool = False) -> str:
    """Hex SHA-256 of a file, streamed so multi-GB files need no memory."""
    path = Path(path)
    hasher = hashlib.sha256()
    with (
        path.open("rb") as fh,
        tqdm(
            total=path.stat().st_size,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            desc=f"hash {path.name}",
            disable=not progress,
            leave=False,
        ) as bar,
    ):
        while block := fh.read(chunk):
            hasher.update(block)
            bar.update(len(block))
    return hasher.hexdigest()


def _record(path: Path, digest: str, size: int, **info: Any) -> None:
    """Write ``path.sha256`` (sha256sum format) and ``path.source.json`` (provenance)."""
    from regbench.io import write_json, write_text

    write_text(f"{digest}  {path.name}\n", _sidecar(path, RECORD_SUFFIX))
    meta = {"filename": path.name, "size": size, "sha256": digest, "date": _now()}
    meta["tool"] = f"regbench {__version__}"
    meta.update({k: v for k, v in info.items() if v is not None})
    write_json(meta, _sidecar(path, ".source.json"))


def _recorded_digest(path: Path) -> str | None:
    """The digest in ``path.sha256``, or None when there is no record."""
    record = _sidecar(path, RECORD_SUFFIX)
    if not record.exists():
        return None
    fields = record.read_text().split()
    digest = fields[0].lower() if fields else ""
    if not _HEX64.match(digest):
        raise ChecksumError(
            f"{record} does not hold a SHA-256 digest; delete it to have {path} re-hashed."
        )
    return digest


def recorded_commit(path: str | Path) -> str | None:
    """The repository commit recorded for a downloaded file (see REPO_COMMIT_HEADER), or None."""
    try:
        commit = json.loads(_sidecar(Path(path), ".source.json").read_text()).get("repo_commit")
    except (OSError, ValueError, AttributeError):
        return None
    return commit if isinstance(commit, str) and commit else None


def discard(path: str | Path) -> None:
    """Delete a downloaded file with its records (it must be fetched again)."""
    path = Path(path)
    for file in (path, _sidecar(path, RECORD_SUFFIX), _sidecar(path, ".source.json")):
        file.unlink(missing_ok=True)


def _recorded_origin(path: Path) -> str | None:
    """How a file got there per its ``.source.json`` ("downloaded", "placed by hand", ...)."""
    try:
        return json.loads(_sidecar(path, ".source.json").read_text()).get("origin")
    except (OSError, ValueError, AttributeError):
        return None


def _manual_hint(url: str, dest: Path, reason: str) -> str:
    part = _part_path(dest)
    msg = (
        f"Could not download {url}\n  reason: {reason}\n"
        "If this machine cannot reach that host, download the file elsewhere (e.g. in a browser)"
        f" and put it at:\n    {dest}\n"
        "It is checksummed and accepted on the next run."
    )
    if part.exists() and part.stat().st_size:
        msg += f"\nThe partial download at {part} is kept and will be resumed."
    return msg


def _hf_token(url: str) -> str | None:
    """A Hugging Face token from the environment, only for huggingface.co (gated subsets)."""
    host = urllib.parse.urlsplit(url).hostname or ""
    if host == "huggingface.co" or host.endswith(".huggingface.co"):
        return os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN")
    return None


def _request(url: str, start: int, headers: Mapping[str, str] | None) -> urllib.request.Request:
    hdrs = {
        "User-Agent": f"regbench/{__version__} (python-urllib)",
        "Accept": "*/*",
        "Accept-Encoding": "identity",  # sizes and digests refer to the stored bytes
    }
    hdrs.update(headers or {})
    req = urllib.request.Request(url, headers=hdrs)
    if start:
        req.add_header("Range", f"bytes={start}-")
    token = _hf_token(url)
    if token and not any(k.lower() == "authorization" for k in hdrs):
        # Unredirected: the signed CDN URL that huggingface.co redirects to rejects a second
        # credential, and the token must not leak to another host.
        req.add_unredirected_header("Authorization", f"Bearer {token}")
    return req


# Model hubs name the commit a branch resolved to (Hugging Face: on the redirect to its CDN).
REPO_COMMIT_HEADER = "X-Repo-Commit"


class _CommitSeen(urllib.request.HTTPRedirectHandler):
    """Follows redirects like the default handler and keeps the first repository commit that a
    hop names: the final (CDN) response no longer carries it."""

    def __init__(self) -> None:
        self.commit: str | None = None

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # noqa: ANN001 - urllib's
        self.commit = self.commit or headers.get(REPO_COMMIT_HEADER)
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _parse_content_range(value: str | None) -> tuple[int | None, int | None]:
    """(first byte, total size) from a Content-Range header; None where absent or '*'."""
    match = _CONTENT_RANGE.match(value or "")
    if not match:
        return None, None
    first = int(match.group(1)) if match.group(1) is not None else None
    total = int(match.group(3)) if match.group(3) != "*" else None
    return first, total


def _is_html(content_type: str | None, filename: str) -> bool:
    mime = (content_type or "").split(";")[0].strip().lower()
    wanted_html = filename.lower().endswith((".html", ".htm"))
    return mime in {"text/html", "application/xhtml+xml"} and not wanted_html


def _certificate_error(exc: BaseException) -> ssl.SSLCertVerificationError | None:
    """The certificate-verification failure behind ``exc`` (bare or wrapped in a URLError)."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return exc
    reason = getattr(exc, "reason", None)
    return reason if isinstance(reason, ssl.SSLCertVerificationError) else None


def _classify(exc: BaseException) -> type[_Retry] | type[_Fatal]:
    """Whether a network exception is worth retrying."""
    if _certificate_error(exc) is not None:
        return _Fatal  # the same certificate comes back on every attempt
    if isinstance(exc, urllib.error.HTTPError):
        return _Retry if exc.code in _RETRY_STATUS else _Fatal
    if isinstance(exc, urllib.error.URLError):
        reason = exc.reason
        if isinstance(reason, socket.gaierror):
            return _Fatal  # the name does not resolve: offline, or a typo; retrying won't help
        return _Retry
    return _Retry  # timeouts, resets, truncated responses


def _describe(exc: BaseException, url: str) -> str:
    cert = _certificate_error(exc)
    if cert is not None:
        host = urllib.parse.urlsplit(url).hostname
        detail = getattr(cert, "verify_message", None) or str(cert)
        return (
            f"the TLS certificate of {host} could not be verified ({detail}); regbench does not "
            "download without verification. If you trust the host, fetch the file with a tool "
            "you have configured for it"
        )
    if isinstance(exc, urllib.error.HTTPError):
        text = f"HTTP {exc.code} {exc.reason}"
        if exc.code in (401, 403) and _hf_token(url) is None and "huggingface.co" in url:
            text += (
                " (this file may be gated: accept the dataset's terms on huggingface.co and set"
                " HF_TOKEN)"
            )
        return text
    if isinstance(exc, urllib.error.URLError):
        return f"cannot reach the host ({exc.reason})"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


# --------------------------------------------------------------------------------------------
# Verification of files already on disk
# --------------------------------------------------------------------------------------------


def verify_existing(
    dest: str | Path,
    *,
    sha256: str | None = None,
    expected_size: int | None = None,
    url: str | None = None,
    progress: bool = True,
) -> Path:
    """Check a file that is already in place instead of downloading it again.

    A file with a ``.sha256`` record must still match it (catches corruption and edits); a file
    placed by hand (no record) is accepted, hashed and recorded. A pinned ``sha256`` or
    ``expected_size`` must match in both cases. Mismatches raise :class:`ChecksumError`; the file
    is left in place because it may be the user's only copy.
    """
    dest = Path(dest).expanduser().absolute()
    pinned = _normalise_digest(sha256)
    size = dest.stat().st_size
    if expected_size is not None and size != expected_size:
        raise ChecksumError(
            f"{dest} has {size} bytes but {expected_size} are expected"
            f"{f' for {url}' if url else ''}; replace it, or delete it to download it again.",
            url=url,
        )
    recorded = _recorded_digest(dest)
    actual = sha256_file(dest, progress=progress)
    if recorded is not None and actual != recorded:
        raise ChecksumError(
            f"{dest} no longer matches its recorded SHA-256 (recorded {recorded}, now {actual}):"
            f" it was modified or corrupted. Delete it and {_sidecar(dest, RECORD_SUFFIX).name}"
            " to download it again.",
            url=url,
            expected=recorded,
            actual=actual,
        )
    if pinned is not None and actual != pinned:
        origin = "placed by hand" if recorded is None else "on disk"
        raise ChecksumError(
            f"{dest} ({origin}) does not match the pinned SHA-256"
            f"{f' of {url}' if url else ''}: expected {pinned}, got {actual}."
            " Replace it with the right file, or delete it to download it again.",
            url=url,
            expected=pinned,
            actual=actual,
        )
    if recorded is None:
        _record(dest, actual, size, url=url, origin="placed by hand")
    return dest


# --------------------------------------------------------------------------------------------
# Download
# --------------------------------------------------------------------------------------------


def _transfer(
    url: str,
    part: Path,
    *,
    expected_size: int | None,
    timeout: float,
    chunk: int,
    progress: bool,
    headers: Mapping[str, str] | None,
    filename: str,
) -> tuple[str, int, str, str | None]:
    """One attempt: stream ``url`` into ``part`` (resuming it); return (sha256, size, final URL,
    the repository commit a hop named or None)."""
    have = part.stat().st_size if part.exists() else 0
    if expected_size is not None and have > expected_size:
        part.unlink()  # longer than the real file: not a prefix of it
        have = 0
    seen = _CommitSeen()
    opener = urllib.request.build_opener(seen)
    try:
        resp = opener.open(_request(url, have, headers), timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code != 416 or not have:
            raise
        # Range not satisfiable: either the part is already complete, or it is stale.
        _, total = _parse_content_range(exc.headers.get("Content-Range"))
        exc.close()
        if total is not None and total == have:
            return sha256_file(part), have, url, seen.commit
        part.unlink()
        have = 0
        resp = opener.open(_request(url, 0, headers), timeout=timeout)

    with resp:
        if _is_html(resp.headers.get("Content-Type"), filename):
            raise _Fatal(
                f"the server answered with a web page (Content-Type {resp.headers['Content-Type']})"
                " instead of the file: typically a login, bot-check or 'virus scan' confirmation"
                " page"
            )
        hasher = hashlib.sha256()
        if have and resp.status == 206:
            first, total = _parse_content_range(resp.headers.get("Content-Range"))
            if first != have:
                part.unlink()
                raise _Retry(f"server resumed at byte {first}, not {have}; restarting")
            if expected_size is not None and total is not None and total != expected_size:
                part.unlink()
                raise ChecksumError(
                    f"{url} now has {total} bytes but {expected_size} were expected",
                    url=url,
                )
            with part.open("rb") as fh:  # the digest must cover the bytes already on disk
                while block := fh.read(chunk):
                    hasher.update(block)
            mode = "ab"
        else:
            # 200: a fresh transfer, or a server that ignored the Range request; start over.
            have = 0
            mode = "wb"
            length = resp.headers.get("Content-Length")
            total = int(length) if length and length.strip().isdigit() else None
            if expected_size is not None and total is not None and total != expected_size:
                part.unlink(missing_ok=True)
                raise ChecksumError(
                    f"{url} has {total} bytes but {expected_size} were expected; not downloading",
                    url=url,
                )
        received = have
        with (
            part.open(mode) as fh,
            tqdm(
                total=total,
                initial=have,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc=filename,
                disable=not progress,
                leave=False,
            ) as bar,
        ):
            while block := resp.read(chunk):
                fh.write(block)
                hasher.update(block)
                received += len(block)
                bar.update(len(block))
            fh.flush()
            os.fsync(fh.fileno())
        if total is not None and received != total:
            raise _Retry(f"connection closed after {received} of {total} bytes")
        commit = seen.commit or resp.headers.get(REPO_COMMIT_HEADER)
        return hasher.hexdigest(), received, resp.geturl(), commit


def download(
    source_or_url: Source | str,
    dest: str | Path,
    *,
    sha256: str | None = None,
    expected_size: int | None = None,
    timeout: float = 30,
    retries: int = 3,
    chunk: int = 1 << 20,
    progress: bool = True,
    backoff: float = 0.5,
    headers: Mapping[str, str] | None = None,
) -> Path:
    """Download to ``dest`` resumably and verifiably; return ``dest``.

    Streams to ``dest.part`` and resumes it with a Range request (restarting when the server
    ignores Range), checks the size against Content-Length / ``expected_size``, hashes while
    streaming, and only then renames onto ``dest`` and writes ``dest.sha256`` and
    ``dest.source.json``. A pinned ``sha256`` (or the Source's) that differs raises
    :class:`ChecksumError` and deletes the bad bytes. If ``dest`` exists it is verified
    (:func:`verify_existing`) instead of downloaded. Transient failures are retried ``retries``
    times with exponential ``backoff`` seconds; then :class:`DownloadError` names the URL and the
    absolute path where the file can be put by hand. ``dest`` may be a directory when a
    :class:`Source` is given.
    """
    if isinstance(source_or_url, Source):
        url = source_or_url.url
        filename = PurePosixPath(source_or_url.filename).name
        sha256 = sha256 or source_or_url.sha256
        expected_size = expected_size if expected_size is not None else source_or_url.size
    else:
        url = str(source_or_url)
        filename = PurePosixPath(urllib.parse.urlsplit(url).path).name or "download"
    pinned = _normalise_digest(sha256)
    dest = Path(dest).expanduser().absolute()
    if dest.is_dir():
        dest = dest / filename
    if dest.exists():
        return verify_existing(
            dest, sha256=pinned, expected_size=expected_size, url=url, progress=progress
        )
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = _part_path(dest)

    failure = "no attempt was made"
    for attempt in range(max(0, retries) + 1):
        if attempt:
            time.sleep(min(backoff * 2 ** (attempt - 1), 30.0))
        try:
            digest, size, final_url, commit = _transfer(
                url,
                part,
                expected_size=expected_size,
                timeout=timeout,
                chunk=chunk,
                progress=progress,
                headers=headers,
                filename=dest.name,
            )
        except ChecksumError:
            raise
        except _Retry as exc:
            failure = str(exc)
            continue
        except _Fatal as exc:
            raise DownloadError(_manual_hint(url, dest, str(exc))) from None
        except (OSError, http.client.HTTPException) as exc:  # network errors; bounded retries
            if isinstance(exc, urllib.error.HTTPError):
                exc.close()
            elif (
                not isinstance(exc, urllib.error.URLError)
                and getattr(exc, "errno", None) in _LOCAL_ERRNOS
            ):
                raise  # a local disk problem, not the host's: say so unchanged
            failure = _describe(exc, url)
            if _classify(exc) is _Fatal:
                raise DownloadError(_manual_hint(url, dest, failure)) from exc
            continue
        break
    else:
        raise DownloadError(
            _manual_hint(url, dest, f"{failure} (gave up after {max(0, retries) + 1} attempts)")
        )

    if expected_size is not None and size != expected_size:
        part.unlink(missing_ok=True)
        raise ChecksumError(
            f"{url} delivered {size} bytes but {expected_size} were expected; the file was deleted.",
            url=url,
        )
    if pinned is not None and digest != pinned:
        part.unlink(missing_ok=True)
        raise ChecksumError(
            f"SHA-256 mismatch for {url}: expected {pinned}, got {digest}."
            " The downloaded bytes were deleted; the server's file differs from the pinned one.",
            url=url,
            expected=pinned,
            actual=digest,
        )
    os.replace(part, dest)
    _record(
        dest,
        digest,
        size,
        url=url,
        resolved_url=final_url if final_url != url else None,
        repo_commit=commit,
        origin="downloaded",
    )
    return dest


# --------------------------------------------------------------------------------------------
# Archives
# --------------------------------------------------------------------------------------------


def _find_member(zf: zipfile.ZipFile, member: str) -> zipfile.ZipInfo:
    try:
        return zf.getinfo(member)
    except KeyError:
        pass
    base = PurePosixPath(member).name
    hits = [i for i in zf.infolist() if not i.is_dir() and PurePosixPath(i.filename).name == base]
    if len(hits) == 1:
        return hits[0]
    names = [i.filename for i in zf.infolist()][:10]
    raise DownloadError(f"{zf.filename} holds no single {member!r}; its entries start with {names}")


def unpack_member(
    archive: str | Path,
    member: str,
    dest: str | Path,
    *,
    progress: bool = True,
    provenance: Mapping[str, Any] | None = None,
) -> Path:
    """Extract one file of a zip atomically to ``dest`` and record its digest beside it.

    The zip's CRC is checked while reading, so a damaged archive raises :class:`ChecksumError`
    and leaves no ``dest`` behind. ``member`` may also match by base name when it is unique.
    """
    from regbench.io import atomic_path

    archive = Path(archive)
    dest = Path(dest).expanduser().absolute()
    hasher = hashlib.sha256()
    try:
        with zipfile.ZipFile(archive) as zf:
            info = _find_member(zf, member)
            with (
                zf.open(info) as src,
                atomic_path(dest) as tmp,
                tmp.open("wb") as out,
                tqdm(
                    total=info.file_size,
                    unit="B",
                    unit_scale=True,
                    unit_divisor=1024,
                    desc=f"unzip {dest.name}",
                    disable=not progress,
                    leave=False,
                ) as bar,
            ):
                while block := src.read(1 << 20):
                    out.write(block)
                    hasher.update(block)
                    bar.update(len(block))
    except (zipfile.BadZipFile, zlib.error, EOFError) as exc:
        raise ChecksumError(
            f"{archive} is damaged ({exc}); delete it and its .sha256 to download it again."
        ) from exc
    except NotImplementedError as exc:  # e.g. Deflate64, which zipfile cannot read
        raise DownloadError(
            f"cannot unpack {member} from {archive} ({exc}); extract it with another tool"
            f" (e.g. `unzip`) and put it at {dest}"
        ) from exc
    extra = dict(provenance or {})
    extra.setdefault("archive", archive.name)
    extra.setdefault("member", info.filename)
    _record(dest, hasher.hexdigest(), dest.stat().st_size, origin="unpacked", **extra)
    return dest


def fetch(source: Source, root: str | Path, *, keep_archive: bool = False, **kw: Any) -> Path:
    """Download ``source`` into ``root`` (unpacking its member); return the usable path.

    For zip payloads the returned path is the extracted member (e.g. ``root/ljubljana.h5``); the
    archive is deleted afterwards unless ``keep_archive`` (an archive placed by hand is kept). A
    member already in place (downloaded before, or put there by hand) is verified and returned
    without network access. ``kw`` goes to :func:`download`.
    """
    root = Path(root).expanduser().absolute()
    if source.unpack is None:
        return download(source, root / source.filename, **kw)
    if source.unpack != "zip" or not source.member:
        raise ValueError(f"{source.name}: cannot unpack {source.unpack!r} payloads")

    target = root / PurePosixPath(source.member).name
    progress = bool(kw.get("progress", True))
    if target.exists():
        return verify_existing(target, url=source.url, progress=progress)
    archive = root / source.filename
    try:
        download(source, archive, **kw)
    except ChecksumError:
        raise
    except DownloadError as exc:
        raise DownloadError(f"{exc}\nOr put the unpacked {target.name} at:\n    {target}") from exc
    unpack_member(
        archive,
        source.member,
        target,
        progress=progress,
        provenance={
            "url": source.url,
            "archive_sha256": _recorded_digest(archive),
            "licence": source.licence,
        },
    )
    if not keep_archive and _recorded_origin(archive) == "downloaded":  # never a user's copy
        for path in (archive, _sidecar(archive, RECORD_SUFFIX), _sidecar(archive, ".source.json")):
            path.unlink(missing_ok=True)
    return target

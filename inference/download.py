"""Resumable download of model archives over HTTPS.

Published nnU-Net weights are zips of hundreds of megabytes to gigabytes
(TotalSegmentator's ``total`` model is five of them), fetched over hospital
networks whose proxies and firewalls cut long transfers. So a download is
written into a ``.part`` file named after its URL and continued with an HTTP
Range request, both within one run (after a dropped connection that still
made progress) and across runs (the ``.part`` file survives a failure, and
the same command continues it).

A resumed file is only as good as the server's promise that the bytes did
not change between requests; the archive's CRCs (and the SHA-256, when one
is given) catch a file that did, and the store then discards the download.

Only ``https`` is accepted, and plain ``http`` only from the loopback
interface (a local mirror or a test server): a checkpoint is unpickled by
PyTorch when the model is loaded, so an archive that a machine in the
middle could replace is code it could run on the node.
"""

from __future__ import annotations

import hashlib
import http.client
import ipaddress
import re
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from email.message import Message
from pathlib import Path
from typing import IO, BinaryIO, Final, TextIO
from urllib.parse import unquote, urlsplit

__all__ = ["DownloadError", "Downloaded", "download", "is_url"]

#: Bytes read per ``read()``: large enough that Python's per-call cost
#: disappears next to the network, small enough for a smooth progress bar.
_CHUNK: Final = 1 << 20

#: Seconds without a byte before a connection counts as dropped.
_TIMEOUT: Final = 60.0

#: Attempts within one run. Another attempt is made only after one that
#: received bytes, so a server that refuses outright fails at once.
_ATTEMPTS: Final = 5

_LOOPBACK_NAMES: Final = frozenset({"localhost"})

_CONTENT_RANGE: Final = re.compile(r"bytes (?:(\d+)-(\d+)|\*)/(\d+|\*)")


class DownloadError(Exception):
    """A download that did not complete.

    Parameters
    ----------
    url : str
        What was being downloaded.
    detail : str
        Why it stopped, and whether a ``.part`` file was kept to resume from.
    """

    def __init__(self, url: str, detail: str) -> None:
        super().__init__(f"download of {url} failed: {detail}")
        self.url = url
        self.detail = detail


@dataclass(frozen=True)
class Downloaded:
    """A completely downloaded file.

    Attributes
    ----------
    path : Path
        The ``.part`` file, now complete; the caller removes it once used.
    size : int
        Its size in bytes.
    """

    path: Path
    size: int


def is_url(source: str) -> bool:
    """Whether `source` names something to download rather than a local path."""
    return urlsplit(source).scheme.lower() in ("http", "https")


def _check_scheme(url: str) -> None:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme == "https":
        return
    host = (parts.hostname or "").lower()
    if scheme == "http" and (host in _LOOPBACK_NAMES or _is_loopback_address(host)):
        return
    raise DownloadError(
        url, "only https URLs are accepted (plain http only from 127.0.0.1, ::1 or localhost)"
    )


def _is_loopback_address(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _part_path(url: str, downloads_dir: Path) -> Path:
    """Where the download of `url` is kept until it is complete.

    The name starts with a hash of the whole URL, so two URLs ending in the
    same file name (the same zip from two releases) never share a ``.part``
    file, and ends with the URL's file name so that an operator recognises it.
    """
    name = unquote(urlsplit(url).path.rsplit("/", 1)[-1])
    name = re.sub(r"[^A-Za-z0-9._-]", "_", name)[:100] or "download"
    digest = hashlib.sha256(url.encode()).hexdigest()[:16]
    return downloads_dir / f"{digest}-{name}.part"


def download(url: str, downloads_dir: Path, *, progress: TextIO | None = sys.stderr) -> Downloaded:
    """Download `url` into `downloads_dir`, continuing an earlier partial download.

    Parameters
    ----------
    url : str
        An https URL, or http on the loopback interface. Redirects are
        followed (GitHub release assets redirect to a storage host).
    downloads_dir : Path
        Folder for ``.part`` files, created if missing.
    progress : text stream or None
        Where the progress bar is drawn; None for silence.

    Returns
    -------
    Downloaded
        The complete file.

    Raises
    ------
    DownloadError
        For a refused scheme, an HTTP error status, or a connection that
        dropped without progress or too often; the ``.part`` file is kept
        then so that the same download continues where it stopped.
    """
    _check_scheme(url)
    downloads_dir.mkdir(parents=True, exist_ok=True)
    part = _part_path(url, downloads_dir)
    bar = _ProgressBar(part.name.split("-", 1)[1].removesuffix(".part"), progress)
    last_error = ""
    for _ in range(_ATTEMPTS):
        before = part.stat().st_size if part.exists() else 0
        try:
            total = _fetch(url, part, bar)
        except _Interrupted as exc:
            last_error = str(exc)
            if (part.stat().st_size if part.exists() else 0) > before:
                continue
            break
        bar.finish()
        return Downloaded(path=part, size=total)
    bar.finish()
    kept = part.stat().st_size if part.exists() else 0
    raise DownloadError(
        url,
        f"{last_error}; {kept} bytes kept in {part}, run the same command again to continue",
    )


class _SchemeCheckingRedirects(urllib.request.HTTPRedirectHandler):
    """Follow redirects (GitHub sends release assets from another host), never to plain http."""

    def redirect_request(
        self,
        req: urllib.request.Request,
        fp: IO[bytes],
        code: int,
        msg: str,
        headers: Message,
        newurl: str,
    ) -> urllib.request.Request | None:
        _check_scheme(newurl)
        return super().redirect_request(req, fp, code, msg, headers, newurl)


# urllib keeps the Range header on the redirected request, so resuming works
# through a redirect too.
_OPENER: Final = urllib.request.build_opener(_SchemeCheckingRedirects)


class _Interrupted(Exception):
    """A transfer that stopped early; the ``.part`` file holds what arrived."""


def _fetch(url: str, part: Path, bar: _ProgressBar) -> int:
    """One request: append to `part` from its current size; the total size when complete."""
    offset = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"User-Agent": "segnode", "Accept-Encoding": "identity"})
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    try:
        response = _OPENER.open(request, timeout=_TIMEOUT)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset:
            return _already_complete(url, part, offset, exc.headers.get("Content-Range", ""))
        raise DownloadError(url, f"HTTP {exc.code} {exc.reason}") from exc
    except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
        raise _Interrupted(f"cannot connect: {getattr(exc, 'reason', exc)}") from exc
    with response:
        if response.status == 206:
            start, total = _content_range(url, response.headers.get("Content-Range", ""))
            if start != offset:
                raise DownloadError(url, f"asked for bytes from {offset}, the server sent from {start}")
            mode = "ab"
        else:
            # The server ignored the Range header: start again from zero.
            offset, mode = 0, "wb"
            length = response.headers.get("Content-Length")
            total = int(length) if length is not None else None
        bar.start(offset, total)
        with part.open(mode) as out:
            received = _copy(response, out, bar)
    size = offset + received
    if total is None:
        return size
    if size < total:
        raise _Interrupted(f"connection closed after {size} of {total} bytes")
    if size > total:
        part.unlink()
        raise DownloadError(url, f"the server sent {size} bytes for a file of {total}")
    return total


def _copy(response: http.client.HTTPResponse, out: BinaryIO, bar: _ProgressBar) -> int:
    received = 0
    try:
        while chunk := response.read(_CHUNK):
            out.write(chunk)
            received += len(chunk)
            bar.advance(len(chunk))
    except (OSError, http.client.HTTPException) as exc:
        # What arrived before the drop is written and stays for the resume.
        raise _Interrupted(f"connection lost: {exc}") from exc
    return received


def _content_range(url: str, header: str) -> tuple[int, int | None]:
    """Start offset and total size of a 206 answer (RFC 9110 section 14.4)."""
    match = _CONTENT_RANGE.fullmatch(header.strip())
    if match is None or match.group(1) is None:
        raise DownloadError(url, f"partial answer with an unusable Content-Range {header!r}")
    total = match.group(3)
    return int(match.group(1)), None if total == "*" else int(total)


def _already_complete(url: str, part: Path, offset: int, content_range: str) -> int:
    """Handle 416: the ``.part`` file may already hold the whole file.

    That happens when a run was stopped between the last byte and the
    installation. A server that reports another size has a different file
    now, so the stale ``.part`` is removed and the next run starts afresh.
    """
    match = _CONTENT_RANGE.fullmatch(content_range.strip())
    if match is not None and match.group(3) not in (None, "*") and int(match.group(3)) == offset:
        return offset
    part.unlink()
    raise DownloadError(
        url, f"the server refused to continue from byte {offset} ({content_range or 'no size given'}); "
        "the partial file was removed, run the same command again to start afresh"
    )


class _ProgressBar:
    """A one-line progress bar on a terminal, or a few lines in a log."""

    _WIDTH: Final = 30
    _INTERVAL: Final = 0.2

    def __init__(self, label: str, stream: TextIO | None) -> None:
        self._label = label
        self._stream = stream
        self._tty = stream is not None and stream.isatty()
        self._done = 0
        self._total: int | None = None
        self._started = time.monotonic()
        self._drawn = 0.0
        self._step = -1
        self._resumed_at = 0
        self._active = False

    def start(self, offset: int, total: int | None) -> None:
        self._done, self._total, self._resumed_at = offset, total, offset
        self._started = time.monotonic()
        if offset and self._stream is not None:
            if self._tty and self._active:
                self._stream.write("\n")
            self._stream.write(f"{self._label}: continuing from {offset / 1e6:.1f} MB\n")
        self._active = True
        self._draw(force=True)

    def advance(self, count: int) -> None:
        self._done += count
        self._draw()

    def finish(self) -> None:
        self._draw(force=True)
        if self._tty and self._active and self._stream is not None:
            self._stream.write("\n")
            self._stream.flush()
        self._active = False

    def _draw(self, force: bool = False) -> None:
        if self._stream is None or not self._active:
            return
        now = time.monotonic()
        if self._tty:
            if not force and now - self._drawn < self._INTERVAL:
                return
            self._drawn = now
            self._stream.write("\r" + self._text(now))
            self._stream.flush()
            return
        # A log gets a line per tenth, or per 100 MB when the size is unknown.
        step = 10 * self._done // self._total if self._total else self._done // 100_000_000
        if step > self._step or (force and step != self._step):
            self._step = step
            self._stream.write(self._text(now) + "\n")

    def _text(self, now: float) -> str:
        rate = (self._done - self._resumed_at) / max(now - self._started, 1e-3) / 1e6
        megabytes = f"{self._done / 1e6:.1f}"
        if not self._total:
            return f"{self._label} {megabytes} MB {rate:.1f} MB/s"
        fraction = min(self._done / self._total, 1.0)
        filled = int(fraction * self._WIDTH)
        bar = "#" * filled + "-" * (self._WIDTH - filled)
        return (
            f"{self._label} [{bar}] {100 * fraction:3.0f}% "
            f"{megabytes}/{self._total / 1e6:.1f} MB {rate:.1f} MB/s"
        )

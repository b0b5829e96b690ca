"""CIFAR-10 for a server that starts without it (a fresh Space): fetched once, in the background, verified, unpacked
atomically.

The archive streams into a ``.part`` file in the destination folder, so a fetch cut off by a dropped connection, a
crash or a restart continues from where it stopped (an HTTP Range request; a server that ignores it sends the whole
file again, which replaces the part). The whole archive's MD5 is checked before anything is unpacked, then every batch
file's (the official archive's published sums) or, for another archive, every batch is read back. Files are unpacked
into a staging folder beside the destination and renamed into place in one step, so a reader finds either no data
set or a whole one. A lock file (flock) in the destination folder lets one process fetch while every other server
using that folder watches its progress. Failed attempts are retried with exponential back-off.

Visitors see one sentence per state (``sentence``), never a path or a flag; the technical detail goes to the log.
"""

import errno
import fcntl
import hashlib
import http.client
import logging
import os
import pickle
import re
import shutil
import tarfile
import tempfile
import threading
import time
import urllib.error
import urllib.request
import zlib
from dataclasses import dataclass
from pathlib import Path

from torchvision.datasets import CIFAR10

from .data import BATCHES_FOLDER, TEST_FILES, TRAIN_FILES, DataMissingError, _read_batch, resolve_data_dir

log = logging.getLogger(__name__)

PART = "cifar-10-python.tar.gz.part"  # the archive while it downloads, beside where it is unpacked
LOCK = ".cifar-10-fetch.lock"  # flock'ed by the one process fetching; holds the archive's size for the others
STAGING = ".unpack-"  # prefix of the folder an archive is unpacked into before it is renamed into place
CHUNK = 1 << 20
TIMEOUT_S = 30  # a connection silent this long is dropped and the fetch resumes on a new one
WATCH_S = 0.5  # how often a process watching another one's fetch looks again
MB = 10**6
STATES = ("off", "fetching", "ready", "failed")

# What went wrong, in words a visitor can read (the log says the rest).
UNREACHABLE = "the image server could not be reached"
CUT_OFF = "the download was cut off"
CHECKSUM = "the downloaded file did not match its published checksum"
CONTENTS = "the downloaded archive did not hold the expected files"
NO_ROOM = "this server has no room for the files"
NOT_WRITABLE = "this server could not write the files"
OFF = ("Training is off on this server: it has no copy of the CIFAR-10 training images and is set not to fetch them. "
       "Predicting and everything else still work.")


@dataclass(frozen=True)
class Source:
    url: str
    md5: str  # of the whole archive
    files: dict | None = None  # name -> MD5 of each file in cifar-10-batches-py/, where published; else each batch is read back


# The reference: torchvision's URL and published checksums, not typed again here.
OFFICIAL = Source(CIFAR10.url, CIFAR10.tgz_md5,
                  {**dict(CIFAR10.train_list + CIFAR10.test_list), CIFAR10.meta["filename"]: CIFAR10.meta["md5"]})


def source(setting: str) -> Source | None:
    """The source a ``STUDIO_DATA_SOURCE`` value names (resnet.studio.limits checks its form); None when it is ``off``."""
    if setting == "off":
        return None
    if setting == "official":
        return OFFICIAL
    url, _, md5 = setting.partition("#md5=")
    return Source(url, md5.lower()) if md5 else Source(url, OFFICIAL.md5, OFFICIAL.files)  # no sum given: a mirror


def present(data_dir) -> bool:
    """Whether every batch training and testing read is in place. Checks names, reads nothing."""
    folder = Path(data_dir) / BATCHES_FOLDER
    return all((folder / name).is_file() for name in TRAIN_FILES + TEST_FILES)


class FetchError(Exception):
    """A failed attempt: ``reason`` is for visitors, the message for the log."""

    def __init__(self, reason: str, detail):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


class _Closed(Exception):
    """The server is shutting down: the fetch stops where it is (the part file stays for the next start)."""


@dataclass(frozen=True)
class Status:
    state: str  # one of STATES
    done: int = 0  # bytes of the archive here so far
    total: int | None = None  # its size, once the image server has said
    unpacking: bool = False
    reason: str = ""  # why the last attempt failed, in visitor words
    retry_in_s: float | None = None

    @property
    def percent(self) -> int | None:
        return min(100, int(100 * self.done / self.total)) if self.total else None


def sentence(status: Status) -> str:
    """What the Train tab says about the data set, in Markdown: no path, no command-line flag."""
    if status.state == "ready":
        return "✅ **The CIFAR-10 training images are here**: training is available."
    if status.state == "off":
        return f"ℹ️ {OFF}"
    if status.state == "failed":
        retry = f"It tries again in {max(1, round(status.retry_in_s))} s" if status.retry_in_s else "It tries again soon"
        return (f"⚠️ **The CIFAR-10 training images could not be fetched**: {status.reason}. {retry}, or press "
                "*Try again*. Runs you start now wait for them.")
    if status.unpacking:
        return ("⏳ **Checking and unpacking the CIFAR-10 training images** (last step). Training starts as soon as they "
                "are ready; runs you start now wait for them.")
    if status.total:
        amount = f"{status.done / MB:.0f} MB of {status.total / MB:.0f} MB, {status.percent}%"
    else:
        amount = f"{status.done / MB:.0f} MB so far" if status.done else "connecting"
    return (f"⏳ **Fetching the CIFAR-10 training images** ({amount}). This server had no copy; training is available "
            "as soon as they are here, and runs you start now wait for them.")


def waiting_note(status: Status) -> str:
    """A queued run's status message while the data set is on its way."""
    if status.state == "failed":
        return f"waiting for the data set ({status.reason}; trying again)"
    if status.unpacking:
        return "waiting for the data set (unpacking)"
    return f"waiting for the data set ({status.percent}%)" if status.percent is not None else "waiting for the data set"


class DataFetch:
    """The data set of one server: whether it is here, and a background fetch when it is not."""

    def __init__(self, data_dir=None, source: Source | None = OFFICIAL, backoff_s: float = 5.0, max_backoff_s: float = 300.0):
        self.data_dir = resolve_data_dir(data_dir).resolve()
        self.source = source
        self.backoff_s, self.max_backoff_s = backoff_s, max_backoff_s
        self._lock = threading.Lock()
        self._thread = None
        self._progress = (0, None)  # (done, total) of this process's download, or of the one it watches
        self._unpacking = False
        self._reason = ""
        self._retry_at = None  # time.monotonic() of the next attempt after a failure
        self._wake = threading.Event()
        self._closed = threading.Event()

    def ready(self) -> bool:
        return present(self.data_dir)

    def start(self) -> "DataFetch":
        """Fetch in the background if the data set is not here and a source is set; one thread, however often asked."""
        with self._lock:
            if self._thread is None and self.source is not None and not self.ready():
                log.info("CIFAR-10 is not in %s: fetching it from %s", self.data_dir, self.source.url)
                self._thread = threading.Thread(target=self._run, name="data-fetch", daemon=True)
                self._thread.start()
        return self

    def retry(self) -> None:
        """Cut the back-off short: the next attempt starts now."""
        with self._lock:
            if self._retry_at is not None:
                self._retry_at = None  # a page asking right after reads the new attempt, not the old failure
                self._wake.set()

    def close(self, timeout: float = 5) -> None:
        self._closed.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def status(self) -> Status:
        if self.ready():
            return Status("ready")
        if self.source is None:
            return Status("off")
        with self._lock:
            done, total = self._progress
            if self._retry_at is not None:
                return Status("failed", done, total, reason=self._reason, retry_in_s=max(0.0, self._retry_at - time.monotonic()))
            return Status("fetching", done, total, unpacking=self._unpacking)

    # ---- the worker -----------------------------------------------------------------------------
    def _run(self) -> None:
        failures = 0
        while not self._closed.is_set():
            try:
                if self._attempt(blocking=False):
                    log.info("CIFAR-10 is ready in %s", self.data_dir)
                    return
                self._closed.wait(WATCH_S)  # another process fetches: look again soon
            except _Closed:
                return
            except FetchError as error:
                failures += 1
                delay = min(self.backoff_s * 2 ** (failures - 1), self.max_backoff_s)
                log.warning("CIFAR-10 fetch from %s into %s failed (attempt %d): %s; next attempt in %.1f s",
                            self.source.url, self.data_dir, failures, error, delay)
                with self._lock:
                    self._reason, self._retry_at, self._unpacking = error.reason, time.monotonic() + delay, False
                self._wake.clear()
                self._wake.wait(delay)
                with self._lock:
                    self._retry_at = None

    def _attempt(self, blocking: bool) -> bool:
        """One try: True once the data set is here; False when another process holds the fetch (not blocking)."""
        try:
            self.data_dir.mkdir(parents=True, exist_ok=True)
            handle = open(self.data_dir / LOCK, "a+")
        except OSError as error:
            raise FetchError(NOT_WRITABLE, error) from None
        with handle:  # closing it releases the lock, also when the process dies
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
            except BlockingIOError:
                self._watch_other()
                return False
            if self.ready():  # fetched by another process while this one waited
                return True
            for stale in self.data_dir.glob(STAGING + "*"):  # an unpacking cut short by a crash
                shutil.rmtree(stale, ignore_errors=True)
            self._download(handle)
            self._unpack()
        return True

    def _watch_other(self) -> None:
        """Progress of the process that holds the fetch, read from its part file and the size it noted."""
        try:
            total = int((self.data_dir / LOCK).read_text().strip() or 0) or None
            done = (self.data_dir / PART).stat().st_size
        except (OSError, ValueError):
            total, done = None, 0
        with self._lock:
            self._progress = (done, total)

    def _download(self, handle) -> None:
        part = self.data_dir / PART
        have = part.stat().st_size if part.exists() else 0
        headers = {"User-Agent": "cifar-resnet-studio", **({"Range": f"bytes={have}-"} if have else {})}
        try:
            response = urllib.request.urlopen(urllib.request.Request(self.source.url, headers=headers), timeout=TIMEOUT_S)
        except urllib.error.HTTPError as error:
            if error.code == 416 and have:  # the part is already whole (a crash came between download and unpacking)
                return
            raise FetchError(f"the image server refused the request (HTTP {error.code})", error) from None
        except (urllib.error.URLError, OSError) as error:
            raise FetchError(UNREACHABLE, error) from None
        with response:
            length = _int(response.headers.get("Content-Length"))
            resumed = response.status == 206 and _range_start(response.headers.get("Content-Range")) == have
            if not resumed:
                have = 0  # the server sent the whole file: it replaces the part
            total = have + length if length is not None else None
            handle.seek(0)
            handle.truncate()
            handle.write(str(total or ""))
            handle.flush()
            if have:
                log.info("CIFAR-10 fetch resumes at byte %d of %s", have, total)
            done = have
            with self._lock:
                self._progress, self._unpacking = (done, total), False
            try:
                out = open(part, "ab" if resumed else "wb")
            except OSError as error:
                raise FetchError(NOT_WRITABLE, error) from None
            with out:
                done = self._receive(response, out, done, total)
        if total is not None and done != total:
            raise FetchError(CUT_OFF, f"{done} of {total} bytes")

    def _receive(self, response, out, done: int, total: int | None) -> int:
        """Copy the response into the part file as it arrives; the bytes the part then holds."""
        while True:
            if self._closed.is_set():
                raise _Closed
            try:
                chunk = response.read1(CHUNK)  # what has arrived: progress moves with the bytes
            except (http.client.HTTPException, OSError) as error:  # a dropped connection, a silent one
                raise FetchError(CUT_OFF, f"after {done} of {total} bytes: {error!r}") from None
            if not chunk:
                return done
            try:
                out.write(chunk)
                out.flush()  # the part file's size is the progress other processes read
            except OSError as error:
                raise FetchError(NO_ROOM if error.errno == errno.ENOSPC else NOT_WRITABLE, error) from None
            done += len(chunk)
            with self._lock:
                self._progress = (done, total)

    def _unpack(self) -> None:
        part = self.data_dir / PART
        with self._lock:
            self._unpacking = True
        staging = Path(tempfile.mkdtemp(prefix=STAGING, dir=self.data_dir))
        try:
            try:
                self._verify(part, staging)
            except FetchError:
                part.unlink(missing_ok=True)  # never resumed: the next attempt starts from the first byte
                raise
            target = self.data_dir / BATCHES_FOLDER
            if target.exists():  # an incomplete copy: set aside (removed with the staging folder), then replaced
                os.replace(target, staging / "replaced")
            os.replace(staging / BATCHES_FOLDER, target)
        except OSError as error:
            raise FetchError(NO_ROOM if error.errno == errno.ENOSPC else NOT_WRITABLE, error) from None
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        part.unlink()

    def _verify(self, part: Path, staging: Path) -> None:
        """The archive's MD5, then its batch files unpacked into ``staging`` and checked one by one."""
        digest = _md5(part)
        if digest != self.source.md5:
            raise FetchError(CHECKSUM, f"{self.source.url}: archive MD5 {digest}, expected {self.source.md5}")
        names = list(self.source.files) if self.source.files else [*TRAIN_FILES, *TEST_FILES]
        wanted = {f"{BATCHES_FOLDER}/{name}" for name in names}
        try:
            with tarfile.open(part, "r:gz") as archive:
                members = [m for m in archive.getmembers() if m.name in wanted and m.isfile()]
                if len(members) != len(wanted):
                    raise FetchError(CONTENTS, f"missing {sorted(wanted - {m.name for m in members})}")
                archive.extractall(staging, members=members, filter="data")
        except (tarfile.TarError, EOFError, zlib.error) as error:
            raise FetchError(CONTENTS, repr(error)) from None
        for name in names:
            path = staging / BATCHES_FOLDER / name
            if self.source.files:
                if _md5(path) != self.source.files[name]:
                    raise FetchError(CHECKSUM, f"{name}: MD5 {_md5(path)}, expected {self.source.files[name]}")
                continue
            try:
                _read_batch(path)  # another archive: each batch must read as training reads it
            except (pickle.UnpicklingError, EOFError, ValueError, KeyError, TypeError) as error:
                raise FetchError(CONTENTS, f"{name}: {error!r}") from None


def fetch_now(data_dir=None, source: Source = OFFICIAL) -> Path:
    """Fetch into ``data_dir`` (resnet.data.resolve_data_dir's) in this thread, once, the way a server does: verified,
    unpacked atomically, shared with any server fetching into the same folder (the command line's --download)."""
    fetch = DataFetch(data_dir, source)
    try:
        fetch._attempt(blocking=True)
    except FetchError as error:
        raise DataMissingError(f"CIFAR-10 could not be fetched from {source.url}: {error}") from None
    return fetch.data_dir


def _int(text) -> int | None:
    return int(text) if text and text.strip().isdigit() else None


def _range_start(content_range) -> int | None:
    match = re.fullmatch(r"bytes (\d+)-\d+/(\d+|\*)", (content_range or "").strip())
    return int(match.group(1)) if match else None


def _md5(path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as handle:
        while block := handle.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()

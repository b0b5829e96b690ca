"""Many images at once: files, folders (recursed) and .zip archives, predicted batch by batch.

Zip members are read into memory one at a time and never extracted: a member's name is only ever
shown, never joined to a path, so names like ``../../etc/x.png`` cannot write or read anywhere.
"""

import csv
import dataclasses
import lzma
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import torch
from PIL import Image

from .caps import DEFAULT_CAPS, DecodeCaps
from .classifier import Classifier
from .errors import UserError
from .evaluate import metrics_from_logits
from .images import FORMATS, ImageError, TooManyPixels, open_image, prepare

BATCH_SIZE = 256
MAX_ZIP_MEMBERS = 100_000
IMAGE_SUFFIXES = frozenset(suffix for suffix, kind in Image.registered_extensions().items() if kind in FORMATS)
# Everything that reading one file or one member can raise; any of them makes just that image unreadable.
READ_ERRORS = (ImageError, OSError, EOFError, zipfile.BadZipFile, zlib.error, lzma.LZMAError, NotImplementedError)


class FolderError(UserError, ValueError):
    """A folder that is not the ImageFolder layout evaluate --folder needs."""


class BatchError(UserError, ValueError):
    """A server's batch request it does not answer; ``status`` is the HTTP status that says why."""

    status = 400


class TooManyImages(BatchError):
    status = 413


@dataclass(frozen=True)
class Source:
    name: str  # what the person sees: the path, or archive.zip:member
    path: Path
    member: zipfile.ZipInfo | None = None
    label: int | None = None


def _is_junk(parts) -> bool:
    """Hidden files and macOS resource forks (__MACOSX/._x.png) are not pictures anyone meant to send."""
    return any((part.startswith(".") and part not in (".", "..")) or part == "__MACOSX" for part in parts)


def _printable(text: str) -> str:
    return "".join(c if c.isprintable() else "?" for c in text)


class Sources:
    """The images that paths name, in a stable order, with the problems found while listing them.

    A file named directly is always tried; folders and archives contribute the files whose suffix
    Pillow knows. Use as a context manager: archives stay open while their members are read.
    """

    def __init__(self, paths=(), caps: DecodeCaps = DEFAULT_CAPS, max_total_pixels: int | None = None):
        """``caps`` bound each image; ``max_total_pixels`` caps the pixels decoded over all images, for a server:
        500 tiny files that each decode to 40 MP would otherwise cost minutes of CPU in one request."""
        self.caps = caps
        self.items, self.problems = [], []  # problems: (name, reason)
        self._archives = {}
        self._pixels_left = max_total_pixels
        for path in paths:
            self.add(path)

    def add(self, path, label: int | None = None, shown_as: str | None = None) -> None:
        """Add the images ``path`` names; ``shown_as`` replaces the path in their names (a server's upload
        cache folder is nobody's business: a visitor sees the name of the file it sent)."""
        path = Path(path)
        items, problems = len(self.items), len(self.problems)
        self._add(path, label)
        if shown_as is not None:
            shown = _printable(shown_as)[:200]
            rename = lambda name: shown + name[len(str(path)):] if name.startswith(str(path)) else name  # noqa: E731
            self.items[items:] = [dataclasses.replace(s, name=rename(s.name)) for s in self.items[items:]]
            self.problems[problems:] = [(rename(name), reason) for name, reason in self.problems[problems:]]

    def _add(self, path: Path, label) -> None:
        if path.is_dir():
            for file in sorted(path.rglob("*")):
                relative = file.relative_to(path).parts
                if file.is_file() and file.suffix.lower() in IMAGE_SUFFIXES and not _is_junk(relative):
                    self.items.append(Source(str(file), file, label=label))
        elif path.suffix.lower() == ".zip" and path.is_file():
            self._add_archive(path, label)
        elif path.is_file():
            self.items.append(Source(str(path), path, label=label))
        else:
            self.problems.append((str(path), "no such file or folder"))

    def _add_archive(self, path: Path, label) -> None:
        try:
            archive = zipfile.ZipFile(path)
        except (zipfile.BadZipFile, OSError) as error:
            self.problems.append((str(path), f"not a readable zip archive ({error})"))
            return
        members = archive.infolist()
        if len(members) > MAX_ZIP_MEMBERS:
            archive.close()
            self.problems.append((str(path), f"the archive has {len(members)} members; the limit is {MAX_ZIP_MEMBERS}"))
            return
        self._archives[path] = archive
        for member in members:
            name = f"{path}:{_printable(member.filename)}"
            parts = PurePosixPath(member.filename).parts
            if member.is_dir() or _is_junk(parts) or PurePosixPath(member.filename).suffix.lower() not in IMAGE_SUFFIXES:
                continue
            if member.flag_bits & 0x1:
                self.problems.append((name, "the member is encrypted"))
            elif member.file_size > self.caps.upload_bytes:
                size, limit = member.file_size / 2**20, self.caps.upload_bytes / 2**20
                self.problems.append((name, f"{size:.1f} MB uncompressed; the limit is {limit:.0f} MB"))
            else:
                self.items.append(Source(name, path, member, label))

    def prepare(self, source: Source) -> torch.Tensor:
        """uint8 [3, 32, 32]; raises one of READ_ERRORS with the reason."""
        max_bytes, max_pixels = self.caps.upload_bytes, self.caps.pixels
        if source.member is None:
            data = source.path
        else:  # the header's size may lie (a zip bomb): read at most one byte past the cap
            with self._archives[source.path].open(source.member) as handle:
                data = handle.read(max_bytes + 1)
            if len(data) > max_bytes:
                raise ImageError(f"the member inflates past the {max_bytes / 2**20:.0f} MB limit")
        if self._pixels_left is None:
            return prepare(data, self.caps)
        budget = min(max_pixels, self._pixels_left)
        try:
            image = open_image(data, self.caps, max_pixels=budget)  # checks the header's size before decoding
        except TooManyPixels as error:
            if budget == max_pixels or error.pixels is None or error.pixels > max_pixels:  # too large for any request
                raise TooManyPixels(max_pixels, error.pixels, self.caps.jpeg_pixels) from None
            raise ImageError("this request has used up its decoding budget; send the rest in another request") from None
        self._pixels_left -= image.width * image.height
        return prepare(image, self.caps)

    def close(self) -> None:
        for archive in self._archives.values():
            archive.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def predict_sources(classifier: Classifier, sources: Sources, batch_size: int = BATCH_SIZE, tta: bool = False,
                    on_error=None, progress=None):
    """Yield (source, raw logits [C]) for every readable image; ``on_error(name, reason)`` hears of the rest.

    Images are decoded one by one but go through the network ``batch_size`` at a time.
    """
    batch = []
    for source in sources.items:
        try:
            batch.append((source, sources.prepare(source)))
        except READ_ERRORS as error:
            if on_error:
                on_error(source.name, str(error) or type(error).__name__)
        if progress is not None:
            progress.update()
        if len(batch) == batch_size:
            yield from _predict_batch(classifier, batch, tta)
            batch = []
    if batch:
        yield from _predict_batch(classifier, batch, tta)


def _predict_batch(classifier: Classifier, batch, tta):
    logits = classifier.logits(torch.stack([image for _, image in batch]), batch_size=len(batch), tta=tta)
    return zip([source for source, _ in batch], logits, strict=True)


def predictions(classifier: Classifier, sources: Sources, batch_size: int = BATCH_SIZE, on_error=None, progress=None):
    """Yield (name, probabilities [C]) for every readable image, calibrated when the classifier's card says how."""
    for source, logits in predict_sources(classifier, sources, batch_size, on_error=on_error, progress=progress):
        yield source.name, classifier.probabilities(logits)


def predict_request(classifier: Classifier, uploads, caps: DecodeCaps, max_images: int,
                    max_pixels: int) -> tuple[list, list]:
    """One server request's images: ``uploads`` are (path, the name its sender gave it) pairs; each image within
    ``caps``, at most ``max_images`` of them and ``max_pixels`` decoded over all. Returns ([(name, raw logits [C])]
    of the readable images, [(name, reason)] of the rest); raises TooManyImages past ``max_images`` and BatchError
    when not one image could be used."""
    problems = []
    with Sources(caps=caps, max_total_pixels=max_pixels) as sources:
        for path, name in uploads:
            sources.add(path, shown_as=name)
        if len(sources.items) > max_images:
            raise TooManyImages(f"{len(sources.items)} images in this request; this server predicts at most "
                                f"{max_images} at a time")
        problems.extend(sources.problems)
        unreadable = lambda name, reason: problems.append((name, reason))  # noqa: E731
        scored = [(source.name, logits) for source, logits in predict_sources(classifier, sources, on_error=unreadable)]
    if not scored:
        reasons = "; ".join(f"{name}: {reason}" for name, reason in problems[:3]) or "no images in the upload"
        raise BatchError(f"none of the files could be used ({reasons})"[:500])
    return scored, problems


def csv_header(classes) -> list:
    return ["path", "prediction", "probability", *classes]


def table_row(name: str, probabilities: torch.Tensor, classes) -> list:
    """[name, top class, its probability, *every class's probability], the probabilities rounded to 6 decimals."""
    values = [round(p, 6) for p in probabilities.tolist()]
    top = int(probabilities.argmax())  # before rounding: two classes 1e-7 apart stay in the model's order
    return [name, classes[top], values[top], *values]


def write_csv(handle, classes, predicted) -> list:
    """Write (name, probabilities [C]) pairs as CSV (csv_header, then a row each, probabilities as text to 6
    decimals) to a text handle, returning the rows as numbers (the server's table)."""
    writer = csv.writer(handle)
    writer.writerow(csv_header(classes))
    rows = [table_row(name, probabilities, classes) for name, probabilities in predicted]
    writer.writerows([name, top, *(f"{p:.6f}" for p in numbers)] for name, top, *numbers in rows)
    return rows


def image_folder(root, classes) -> Sources:
    """An ImageFolder layout: one subfolder per class, named as ``classes`` (any letter case)."""
    root = Path(root)
    if not root.is_dir():
        raise FolderError(f"{root}: no such folder")
    index = {name.lower(): i for i, name in enumerate(classes)}
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not _is_junk([p.name]))
    unknown = [p.name for p in folders if p.name.lower() not in index]
    if unknown:
        raise FolderError(f"{root}: unknown class folder(s) {', '.join(map(_printable, unknown))}; "
                          f"subfolders must be named after the classes: {', '.join(classes)}")
    sources = Sources()
    for folder in folders:
        sources.add(folder, label=index[folder.name.lower()])
    if not sources.items:
        raise FolderError(f"{root}: no images in class subfolders ({', '.join(classes)})")
    return sources


def evaluate_folder(classifier: Classifier, sources: Sources, batch_size=BATCH_SIZE, tta=False, on_error=None,
                    progress=None) -> dict:
    """The metrics (metrics_from_logits) of labelled sources; a class without images scores None."""
    scored = list(predict_sources(classifier, sources, batch_size, tta, on_error, progress))
    num_classes = len(classifier.classes)
    if not scored:
        raise FolderError("none of the images could be read")
    labels = torch.tensor([source.label for source, _ in scored])
    metrics = metrics_from_logits(torch.stack([logits for _, logits in scored]), labels, num_classes)
    counts = torch.bincount(labels, minlength=num_classes).tolist()
    metrics["per_class_acc"] = [acc if count else None for acc, count in zip(metrics["per_class_acc"], counts, strict=True)]
    metrics["per_class_count"] = counts
    metrics["unreadable"] = len(sources.items) - len(scored)
    return metrics

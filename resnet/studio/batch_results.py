"""A batch prediction as the Predict tab hands it back: a table, the same rows as a CSV file to download, and a
note in Markdown that counts the images and names the files that could not be used (the HTTP API returns the
same rows and problems as JSON: resnet.studio.http_api)."""

import pandas as pd

from .. import batch
from ..classifier import Classifier
from . import downloads

NOTE_PROBLEMS = 20  # unreadable files named in the note; the rest are counted
MARKDOWN_SPECIAL = "\\`*_[]<>#|"
NAME_CHARS = 200  # of a visitor's file name or a reason, as the note shows it


def table_and_csv(classifier: Classifier, scored: list) -> tuple[pd.DataFrame, str]:
    """(table, CSV path) of ``scored``, resnet.batch.predict_request's [(name, raw logits)]: one row per image with
    its name, top class, that class's probability and every class's."""
    with open(downloads.fresh_file("predictions.csv"), "w", newline="") as handle:
        rows = batch.write_csv(handle, classifier.classes, ((name, classifier.probabilities(logits)) for name, logits in scored))
    return pd.DataFrame(rows, columns=batch.csv_header(classifier.classes)), handle.name


def note(predicted: int, problems: list) -> str:
    """How many images were predicted and, for ``problems`` ([(name, reason)]), which files could not be used
    and why."""
    text = f"{predicted} image{'s' if predicted != 1 else ''} predicted"
    if problems:
        listed = "\n".join(f"- {markdown_safe(name)}: {markdown_safe(reason)}" for name, reason in problems[:NOTE_PROBLEMS])
        more = f"\n- ... and {len(problems) - NOTE_PROBLEMS} more" if len(problems) > NOTE_PROBLEMS else ""
        text += f"; {len(problems)} could not be used:\n{listed}{more}"
    return text


def markdown_safe(text) -> str:
    """``text`` (a visitor's file name, say) as Markdown shows it literally: no link, emphasis, heading or HTML."""
    return "".join("\\" + c if c in MARKDOWN_SPECIAL else c for c in str(text))[:NAME_CHARS]

"""The errors a person's input can cause, in one tuple: each says what is wrong in one sentence, and every
front end (the studio, the command line) shows that sentence instead of a stack trace."""

from .batch import BatchError, FolderError
from .config import ConfigError
from .data import DataMissingError
from .export import ExportError
from .images import ImageError
from .limits import LimitError
from .runs import RunError
from .stress import StressError
from .weights import WeightsError

USER_ERRORS = (ConfigError, DataMissingError, RunError, WeightsError, ImageError, FolderError, BatchError, StressError,
               ExportError, LimitError)

"""``python app.py`` from start to stop: the host's limits checked first, the package's log on stderr, the run
queue (which starts fetching CIFAR-10 on a server without it), a SIGTERM handler, then the UI and the HTTP API on
one port (resnet.studio.http_api.serve)."""

import logging
import signal
from collections.abc import Callable

import gradio as gr

from . import http_api, limits
from .handlers import Studio


def main(build_demo: Callable[[Studio], gr.Blocks], launch_options: Callable[[], dict]) -> None:
    """Serve the page ``build_demo`` makes over a new Studio, with ``launch_options()``, until the process stops."""
    try:
        limits.current()  # a host's STUDIO_* variables, checked before anything starts
    except limits.LimitError as error:
        raise SystemExit(f"error: {error}") from None
    # The package's own log (the data set's fetch: where from, where to, why an attempt failed) goes to stderr; visitors
    # see sentences instead.
    logging.getLogger("resnet").setLevel(logging.INFO)
    logging.getLogger("resnet").addHandler(logging.StreamHandler())
    studio = Studio()
    stop_on_sigterm(studio)
    http_api.serve(build_demo(studio), studio.root, **launch_options())


def stop_on_sigterm(studio: Studio) -> None:
    """A host stopping the server (a Space restart sends SIGTERM) stops the training child first:
    it checkpoints, its run reads `stopped`, and a resume continues it after the restart."""

    def shut_down(signum, frame):
        studio.queue.close(stop_child=True)
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, shut_down)

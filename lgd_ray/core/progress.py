"""One progress bar for every long loop, terminal or log file alike."""

from __future__ import annotations

import sys
from typing import Any, Iterable

LOG_INTERVAL_S = 30.0


def progress_bar(iterable: Iterable | None = None, **kwargs: Any):
    """tqdm, with a frame every 30 s when it writes to a file or pipe (a log, `ray job logs`) rather
    than a terminal: there every frame stays in the log, ten a second by default, all on one line."""
    # imported here: a worker that shows no bar never loads it
    from tqdm.auto import tqdm

    stream = kwargs.get("file") or sys.stderr
    if not (hasattr(stream, "isatty") and stream.isatty()):
        # both: tqdm's monitor redraws a bar left for maxinterval (10 s by default) whatever mininterval says
        kwargs.setdefault("mininterval", LOG_INTERVAL_S)
        kwargs.setdefault("maxinterval", LOG_INTERVAL_S)
    return tqdm(iterable, **kwargs)

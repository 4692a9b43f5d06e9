"""Download progress reports, and a callback that draws them as tqdm bars."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass
class DownloadProgress:
    """One progress report. `downloaded` only goes back (to 0) when a server ignores a resume request.

    `bytes_per_second` (since this download started) and `eta_seconds` are None until they can be estimated."""

    name: str
    downloaded: int
    total: int | None
    done: bool
    bytes_per_second: float | None = None
    eta_seconds: float | None = None


ProgressCallback = Callable[[DownloadProgress], None]


def tqdm_progress(**tqdm_kwargs: Any) -> ProgressCallback:
    """A progress callback drawing one tqdm bar (bytes) per file; a bar closes when its file is done."""
    from tqdm.auto import tqdm

    bars: dict[str, Any] = {}

    def callback(event: DownloadProgress) -> None:
        bar = bars.get(event.name)
        if bar is None:
            options = {"unit": "B", "unit_scale": True, "unit_divisor": 1024, "desc": event.name, **tqdm_kwargs}
            bar = bars[event.name] = tqdm(total=event.total, initial=event.downloaded, **options)
        if event.total is not None and bar.total != event.total:
            bar.total = event.total
        bar.n = event.downloaded
        bar.refresh()
        if event.done:
            bar.close()
            del bars[event.name]

    return callback

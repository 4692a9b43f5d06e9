"""The UI's ``/history`` page: recent jobs with thumbnails, and their image files."""

from __future__ import annotations

import html
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fastapi import APIRouter, HTTPException, Query
from fastapi.responses import FileResponse, HTMLResponse

from foci.service.jobs import JobError, JobStore

HISTORY_PATH = "/history"


class HistoryPages:
    """The history routes of :class:`~foci.apps.webui.FociUI` (a mixin: it uses the UI's store, output folder
    and title)."""

    store: JobStore
    output_dir: Path
    title: str

    def history_router(self, *, ui_path: str = "/", dependencies: Sequence[Any] = ()) -> APIRouter:
        """``GET /history`` (recent jobs with thumbnails, linking back to the UI at ``ui_path``) and
        ``GET /history/image/{job_id}/{index}``; ``dependencies`` (e.g. an auth check) guard both."""
        router = APIRouter(dependencies=list(dependencies))

        @router.get(HISTORY_PATH, response_class=HTMLResponse, include_in_schema=False)
        def history(limit: int = Query(50, ge=1, le=500), offset: int = Query(0, ge=0)) -> HTMLResponse:
            return HTMLResponse(self.history_html(limit=limit, offset=offset, ui_path=ui_path))

        @router.get(HISTORY_PATH + "/image/{job_id}/{index}", include_in_schema=False)
        def history_image(job_id: str, index: int) -> FileResponse:
            return FileResponse(self.image_file(job_id, index))

        return router

    def image_file(self, job_id: str, index: int) -> Path:
        """The file of a job's ``index``-th image; 404 when unknown or outside the output folder."""
        try:
            job = self.store.get(job_id)
        except JobError:
            raise HTTPException(404, f"unknown job {job_id!r}") from None
        if not 0 <= index < len(job.images):
            raise HTTPException(404, f"job {job_id!r} has no image {index}")
        path = (self.output_dir / job.images[index].path).resolve()
        if not path.is_relative_to(self.output_dir) or not path.is_file():
            raise HTTPException(404, "image file not found")
        return path

    def history_html(self, *, limit: int = 50, offset: int = 0, ui_path: str = "/") -> str:
        """A self-contained page listing recent jobs, newest first, with their images as thumbnails."""
        jobs = sorted(self.store.list(limit=limit, offset=offset), key=lambda job: job.created_at, reverse=True)
        rows = []
        for job in jobs:
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(job.created_at))
            thumbs = "".join(
                f'<a href="{HISTORY_PATH}/image/{job.id}/{index}" target="_blank">'
                f'<img src="{HISTORY_PATH}/image/{job.id}/{index}" alt="seed {image.seed}" loading="lazy" '
                f'width="128"></a>'
                for index, image in enumerate(job.images))
            error = f'<div class="error">{html.escape(job.error)}</div>' if job.error else ""
            settings = json.dumps({"seed": job.task.seed, "size": job.task.aspect_ratio,
                                   "performance": job.task.performance, "styles": job.task.styles})
            rows.append(
                f'<tr class="job {job.state.value}" data-job="{html.escape(job.id)}"><td>{when}</td>'
                f'<td>{job.state.value}</td><td class="prompt">{html.escape(job.task.prompt)}{error}'
                f'<div class="settings">{html.escape(settings)}</div></td><td>{thumbs}</td></tr>')
        body = "".join(rows) or '<tr><td colspan="4">No jobs yet.</td></tr>'
        newer = max(0, offset - limit)
        links = (f'<a href="{HISTORY_PATH}?limit={limit}&offset={newer}">newer</a> ' if offset else "") + \
            (f'<a href="{HISTORY_PATH}?limit={limit}&offset={offset + limit}">older</a>'
             if len(jobs) == limit else "")
        return (f'<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(self.title)} history'
                '</title><style>body{font-family:sans-serif;margin:1.5em;background:#111;color:#ddd}'
                'table{border-collapse:collapse;width:100%}td,th{border-bottom:1px solid #333;padding:.4em;'
                'vertical-align:top;text-align:left}img{margin:2px;border-radius:4px}.settings{color:#888;'
                'font-size:.8em}.error{color:#f66}a{color:#8af}</style></head><body>'
                f'<h1>Recent jobs</h1><p><a href="{html.escape(ui_path)}">back to the generator</a></p>'
                '<table><tr><th>Created</th><th>State</th><th>Prompt</th><th>Images</th></tr>'
                f'{body}</table><p>{links}</p></body></html>')

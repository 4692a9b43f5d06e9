"""Web UI: control ↔ task mapping, the history page, and the real app in headless Chromium (Playwright).

The browser tests start the FastAPI app with the mounted Gradio UI under uvicorn on 127.0.0.1, with a real worker
and engine on the tiny checkpoint, and drive it like a user.
"""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from foci.apps.webui import (  # noqa: E402
    RESTRICTED_CONTROLS,
    UIError,
    build_ui,
    forced_control_values,
    mount_ui,
    parse_seed,
    performance_lock,
    progress_html,
    task_from_values,
    values_from_task,
)
from foci.engine.engine import Engine  # noqa: E402
from foci.records.metadata import ImageRecord, to_fooocus_json  # noqa: E402
from foci.service.events import EventBus  # noqa: E402
from foci.service.jobs import JobImage, JobState, JobStore  # noqa: E402
from foci.service.worker import Worker  # noqa: E402
from foci.settings.config import FociSettings  # noqa: E402
from foci.task import SAMPLERS, GenerationTask, LoraSpec  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--no-first-run", "--disable-sync", "--disable-quic"]
TIMEOUT_MS = 60_000
needs_chromium = pytest.mark.skipif(not Path(CHROMIUM).exists() or shutil.which(CHROMIUM) is None,
                                    reason="Debian chromium (/usr/bin/chromium) is not installed")


def _defaults(checkpoint: Path) -> dict[str, Any]:
    return dict(base_model=checkpoint.name, styles=[], loras=[], aspect_ratio="64*64", steps=2, image_number=1,
                performance="Speed")


# ------------------------------------------------------------------------------------------ no browser
def test_controls_round_trip_through_a_task() -> None:
    task = GenerationTask(prompt="a fox\nsecond line", negative_prompt="blur", styles=["Fooocus Sharp"],
                          performance="Quality", aspect_ratio="832*1216", image_number=3, seed=2**62 + 5,
                          guidance_scale=6.5, sharpness=3.0, sampler="euler_ancestral", scheduler="normal",
                          clip_skip=1, base_model="base.safetensors", refiner_model="ref.safetensors",
                          refiner_switch=0.7, loras=[LoraSpec(name="a.safetensors", weight=0.4, enabled=False)],
                          freeu={"enabled": True, "b1": 1.1}, overwrite_width=512, output_format="webp",
                          metadata_scheme="a1111", steps=12)
    values = values_from_task(task, lora_rows=5)
    assert values["overwrite_step"] == 12  # explicit steps differing from the mode's show as the forced steps
    assert values["lora_name_1"] == "None" and values["refiner_model"] == "ref.safetensors"
    rebuilt = task_from_values(values, lora_rows=5)
    expected = task.model_dump() | {"steps": 30, "overwrite_step": 12}
    assert rebuilt.model_dump() == expected
    assert rebuilt.effective_steps == task.effective_steps == 12


def test_bad_control_values_give_readable_errors() -> None:
    values = values_from_task(GenerationTask(base_model="b.safetensors"), lora_rows=5)
    with pytest.raises(UIError, match="seed must be a whole number"):
        task_from_values(values | {"seed": "12x"}, lora_rows=5)
    with pytest.raises(UIError, match="guidance_scale"):
        task_from_values(values | {"guidance_scale": 99}, lora_rows=5)
    with pytest.raises(UIError, match="base model"):
        task_from_values(values | {"base_model": ""}, lora_rows=5)
    with pytest.raises(UIError, match="between 0 and"):
        parse_seed(str(2**63))
    assert parse_seed(" 42 ") == 42
    assert task_from_values(values, lora_rows=5, seed=9).seed == 9
    assert "&lt;b&gt;" in progress_html(50, "<b>")


# ------------------------------------------------------------------------------------------ live server
@dataclass
class LiveUI:
    url: str
    store: JobStore
    worker: Worker
    output_dir: Path


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def live_ui(engine: Engine, tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveUI]:
    """The app factory a deployment would use, in miniature: store, bus, worker, engine, API-less FastAPI + UI."""
    import uvicorn
    from fastapi import FastAPI

    root = tmp_path_factory.mktemp("ui")
    store = JobStore(root / "jobs.sqlite3")
    bus = EventBus()
    worker = Worker(store, engine, bus, poll_interval=0.05)
    blocks = build_ui(store=store, bus=bus, worker=worker, engine=engine, settings=FociSettings(),
                      output_dir=engine.output_dir, defaults=_defaults(tiny_checkpoint), root=root)
    app = mount_ui(FastAPI(), blocks)
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    worker.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    try:
        yield LiveUI(url=f"http://127.0.0.1:{port}", store=store, worker=worker, output_dir=engine.output_dir)
    finally:
        server.should_exit = True
        thread.join(10)
        worker.stop(timeout=30)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian chromium (/usr/bin/chromium) is not installed")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def page(browser: Any, live_ui: LiveUI) -> Iterator[Any]:
    """A fresh browser context (so a fresh Gradio session) on the UI, fully loaded."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    context.set_default_timeout(TIMEOUT_MS)
    tab = context.new_page()
    tab.goto(live_ui.url + "/")
    tab.locator("#foci-generate").wait_for(state="visible")
    try:
        yield tab
    finally:
        context.close()


def _wait_for(condition: Any, timeout: float = 60, message: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {message}")


def _open_advanced(page: Any) -> None:
    page.locator("#foci-advanced input[type=checkbox]").check()
    page.locator("#foci-right").wait_for(state="visible")


def _progress_text(page: Any) -> str:
    return page.locator("#foci-progress .foci-progress-text").inner_text()


def _record_progress_texts(page: Any) -> None:
    """Collect every progress line the page shows in ``window.fociTexts`` (steps can pass faster than a poll)."""
    page.evaluate("""() => {
        window.fociTexts = [];
        new MutationObserver(() => {
            const text = document.querySelector('#foci-progress .foci-progress-text');
            if (text) window.fociTexts.push(text.textContent);
        }).observe(document.body, {subtree: true, childList: true, characterData: true});
    }""")


@needs_chromium
def test_generate_streams_progress_into_the_gallery(page: Any, live_ui: LiveUI, tmp_path: Path) -> None:
    # Record every progress line the page shows (steps can pass faster than a poll would notice).
    _record_progress_texts(page)
    page.locator("#foci-prompt textarea").fill("a red apple on a table")
    page.locator("#foci-generate").click()
    page.locator("#foci-gallery img").first.wait_for(state="visible")
    page.get_by_text("Finished: 1 image").first.wait_for()
    texts = page.evaluate("window.fociTexts")
    assert any(text.startswith("Sampling step 1/2, image 1/1") for text in texts), texts
    page.locator("#foci-generate").wait_for(state="visible")  # the last update, just after the final text
    page.locator("#foci-stop").wait_for(state="hidden")

    (job,) = [job for job in live_ui.store.list() if job.task.prompt == "a red apple on a table"]
    assert job.state is JobState.DONE and len(job.images) == 1
    assert job.task.styles == [] and job.task.aspect_ratio == "64*64" and job.task.effective_steps == 2
    assert (live_ui.output_dir / job.images[0].path).is_file()

    # The history page lists the job with its thumbnail, served from the output folder.
    history = httpx.get(live_ui.url + "/history", timeout=10)
    assert history.status_code == 200 and "a red apple on a table" in history.text
    thumbnail = httpx.get(f"{live_ui.url}/history/image/{job.id}/0", timeout=10)
    assert thumbnail.status_code == 200 and thumbnail.content.startswith(b"\x89PNG")
    assert httpx.get(f"{live_ui.url}/history/image/{job.id}/5", timeout=10).status_code == 404

    _open_advanced(page)
    page.screenshot(path=str(tmp_path / "foci_ui.png"), full_page=True)
    shutil.copyfile(tmp_path / "foci_ui.png", "/tmp/foci_ui.png")


@needs_chromium
def test_stop_cancels_a_long_job(page: Any, live_ui: LiveUI) -> None:
    _open_advanced(page)
    page.get_by_role("tab", name="Advanced").click()
    page.locator("#foci-developer input[type=checkbox]").check()
    page.get_by_role("tab", name="Overrides").click()
    page.locator("#foci-overwrite-step input").fill("40")
    page.locator("#foci-prompt textarea").fill("a very slow painting")
    page.locator("#foci-generate").click()
    page.get_by_text("Sampling step").first.wait_for()
    page.locator("#foci-stop").click()
    page.get_by_text("Stopped").first.wait_for()
    (job,) = [job for job in live_ui.store.list() if job.task.prompt == "a very slow painting"]
    assert job.task.effective_steps == 40
    final = _wait_for(lambda: (j := live_ui.store.get(job.id)).state.final and j, message="the job to end")
    assert final.state is JobState.CANCELLED and final.images == []
    page.locator("#foci-generate").wait_for(state="visible")


@needs_chromium
def test_pasted_metadata_restores_the_controls(page: Any, live_ui: LiveUI, tiny_checkpoint: Path) -> None:
    task = GenerationTask(prompt="a lighthouse at dusk", negative_prompt="fog", seed=123456789012,
                          sampler="euler_ancestral", scheduler="normal", guidance_scale=5.5, steps=2, styles=[],
                          aspect_ratio="64*64", base_model=tiny_checkpoint.name)
    record = ImageRecord(task=task, seed=task.seed, width=64, height=64, positive_items=[task.prompt],
                         negative_items=["fog"], base_model_name=tiny_checkpoint.name, software="Foci test",
                         device="cpu")
    page.locator("#foci-prompt textarea").fill(to_fooocus_json(record))
    page.locator("#foci-load-parameters").click()
    prompt = page.locator("#foci-prompt textarea")
    _wait_for(lambda: prompt.input_value() == "a lighthouse at dusk", message="the restored prompt")
    _open_advanced(page)
    assert page.locator("#foci-seed input, #foci-seed textarea").first.input_value() == "123456789012"
    assert page.locator("#foci-negative textarea").input_value() == "fog"
    assert not page.locator("#foci-random input[type=checkbox]").is_checked()
    page.get_by_role("tab", name="Advanced").click()
    page.locator("#foci-developer input[type=checkbox]").check()
    assert page.locator("#foci-sampler input").input_value() == "euler_ancestral"
    assert page.locator("#foci-scheduler input").input_value() == "normal"


@needs_chromium
def test_pasted_fooocus_metadata_lists_the_styles_foci_does_not_know(page: Any, live_ui: LiveUI) -> None:
    """Issue 16.5: Fooocus's own style names are named in a warning with the way to import them, not dropped
    silently."""
    import json

    payload = {"prompt": "a gothic cat", "negative_prompt": "", "styles": "['Fooocus V2', 'SAI Anime', 'Misc Gothic']",
               "seed": "5", "steps": 2, "resolution": "(64, 64)", "guidance_scale": 4, "sharpness": 2,
               "sampler": "dpmpp_2m", "scheduler": "karras", "performance": "Speed", "version": "Fooocus v2.5.5"}
    page.locator("#foci-prompt textarea").fill(json.dumps(payload))
    page.locator("#foci-load-parameters").click()
    warning = page.get_by_text("unknown to Foci and were left out").first
    warning.wait_for()
    text = warning.inner_text()
    assert "2 style(s)" in text and "SAI Anime, Misc Gothic" in text and "foci styles import" in text
    prompt = page.locator("#foci-prompt textarea")  # the toast comes while the handler runs, before its outputs
    _wait_for(lambda: prompt.input_value() == "a gothic cat", message="the restored prompt")


@needs_chromium
def test_advanced_shows_the_tabs_and_bad_input_queues_nothing(page: Any, live_ui: LiveUI) -> None:
    assert not page.locator("#foci-right").is_visible()
    _open_advanced(page)
    for name in ("Settings", "Styles", "Models", "Advanced"):
        assert page.get_by_role("tab", name=name).is_visible()
    assert page.locator("#foci-history-link").get_attribute("href") == "/history"

    # Lightning locks the guidance slider on its forced value and hides the negative prompt; Speed undoes it.
    assert page.locator("#foci-negative textarea").is_visible()
    page.get_by_role("tab", name="Advanced").click()
    guidance = page.locator("#foci-guidance input[type=number]")
    own_guidance = float(guidance.input_value())
    assert own_guidance != 1.0 and guidance.is_enabled()
    page.get_by_role("tab", name="Settings").click()
    page.locator("#foci-performance").get_by_label("Lightning").check()
    page.get_by_role("tab", name="Advanced").click()
    _wait_for(guidance.is_disabled, message="the guidance slider to lock")
    assert page.locator("#foci-guidance input[type=range]").is_disabled()
    assert float(guidance.input_value()) == 1.0
    page.get_by_role("tab", name="Settings").click()
    assert not page.locator("#foci-negative textarea").is_visible()
    page.locator("#foci-performance").get_by_label("Speed", exact=True).check()
    page.locator("#foci-negative textarea").wait_for(state="visible")
    page.get_by_role("tab", name="Advanced").click()
    _wait_for(guidance.is_enabled, message="the guidance slider to unlock")
    assert float(guidance.input_value()) == own_guidance

    page.get_by_role("tab", name="Styles").click()
    styles = page.locator("#foci-styles")
    assert styles.get_by_label("Fooocus V2").count() == 1
    page.locator("#foci-style-search input, #foci-style-search textarea").first.fill("cinematic")
    _wait_for(lambda: styles.get_by_label("Fooocus V2").count() == 0, message="the style filter")

    page.get_by_role("tab", name="Settings").click()
    page.locator("#foci-random input[type=checkbox]").uncheck()
    page.locator("#foci-seed input, #foci-seed textarea").first.fill("not a number")
    before = len(live_ui.store.list(limit=1000))
    page.locator("#foci-prompt textarea").fill("never queued")
    page.locator("#foci-generate").click()
    page.get_by_text("seed must be a whole number").first.wait_for()
    assert len(live_ui.store.list(limit=1000)) == before


def test_history_page_escapes_and_guards_paths(tmp_path: Path, tiny_checkpoint: Path, engine: Engine) -> None:
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    store = JobStore(tmp_path / "jobs.sqlite3")
    outputs = tmp_path / "outputs"
    outputs.mkdir()
    job = store.submit(GenerationTask(prompt="<script>x</script>", base_model="b.safetensors"))
    claimed = store.claim_next()
    assert claimed is not None and claimed.id == job.id
    store.complete(job.id, [JobImage(path="../secret.png", seed=1, width=64, height=64)])
    (tmp_path / "secret.png").write_bytes(b"\x89PNG")
    blocks = build_ui(store=store, bus=EventBus(), worker=None, engine=engine, settings=FociSettings(),
                      output_dir=outputs, defaults=_defaults(tiny_checkpoint), root=tmp_path)
    client = TestClient(mount_ui(FastAPI(), blocks))
    page = client.get("/history")
    assert page.status_code == 200
    assert "<script>x</script>" not in page.text and "&lt;script&gt;" in page.text
    assert client.get(f"/history/image/{job.id}/0").status_code == 404
    assert client.get("/history/image/nope/0").status_code == 404


@needs_chromium
def test_dropped_image_restores_its_parameters(page: Any, tmp_path: Path, tiny_checkpoint: Path) -> None:
    from PIL import Image

    from foci.records.outputs import save_image

    task = GenerationTask(prompt="a quiet harbour", seed=777, sampler="dpmpp_2m", guidance_scale=3.5, steps=2,
                          styles=[], aspect_ratio="64*64", base_model=tiny_checkpoint.name, metadata_scheme="a1111")
    record = ImageRecord(task=task, seed=777, width=64, height=64, positive_items=[task.prompt], negative_items=[],
                         base_model_name=tiny_checkpoint.name, software="Foci test", device="cpu")
    image = save_image(Image.new("RGB", (64, 64), "navy"), tmp_path / "dropped.png", record=record, scheme="a1111")
    _open_advanced(page)
    page.locator("#foci-metadata-file input[type=file]").set_input_files(str(image))
    prompt = page.locator("#foci-prompt textarea")
    _wait_for(lambda: prompt.input_value() == "a quiet harbour", message="the restored prompt")
    assert page.locator("#foci-seed input, #foci-seed textarea").first.input_value() == "777"


@needs_chromium
def test_generate_forever_until_stop(page: Any, live_ui: LiveUI) -> None:
    prompt = "an endless series"
    page.locator("#foci-forever input[type=checkbox]").check()
    page.locator("#foci-prompt textarea").fill(prompt)
    page.locator("#foci-generate").click()

    def jobs() -> list[Any]:
        return [job for job in live_ui.store.list(limit=1000) if job.task.prompt == prompt]

    _wait_for(lambda: sum(job.state is JobState.DONE for job in jobs()) >= 2, message="two finished jobs")
    # the gallery keeps the earlier runs' images (one per run here) instead of starting empty each run
    _wait_for(lambda: page.locator("#foci-gallery img").count() >= 2, 30, "two runs' images in the gallery")
    page.locator("#foci-stop").click()
    page.locator("#foci-generate").wait_for(state="visible")
    time.sleep(0.5)  # nothing new may be submitted after Stop
    ended = jobs()
    assert all(job.state.final for job in ended), [job.state for job in ended]
    assert len({job.task.seed for job in ended}) == len(ended)  # a fresh random seed each round


def _slow_steps(page: Any, steps: int) -> None:
    """Force ``steps`` sampling steps (Developer options), so a job lasts long enough to watch."""
    _open_advanced(page)
    page.get_by_role("tab", name="Advanced").click()
    page.locator("#foci-developer input[type=checkbox]").check()
    page.get_by_role("tab", name="Overrides").click()
    page.locator("#foci-overwrite-step input").fill(str(steps))


@needs_chromium
def test_each_finished_image_shows_while_the_next_samples(page: Any, live_ui: LiveUI) -> None:
    prompt = "two pictures, shown one by one"
    _open_advanced(page)
    page.locator("#foci-image-number input[type=number]").fill("2")
    page.locator("#foci-image-number input[type=number]").press("Enter")
    _slow_steps(page, 60)
    page.locator("#foci-prompt textarea").fill(prompt)
    page.locator("#foci-generate").click()
    page.locator("#foci-gallery img").first.wait_for(state="visible")
    (job,) = [job for job in live_ui.store.list(limit=1000) if job.task.prompt == prompt]
    assert live_ui.store.get(job.id).state is JobState.RUNNING  # image 2 still sampling
    # image 1 is in the gallery while the progress line moves on to image 2 (its first step may come a moment later)
    page.wait_for_function("() => (document.querySelector('#foci-progress .foci-progress-text') || {}).textContent"
                           "?.includes('image 2/2')")
    assert page.locator("#foci-gallery img").count() >= 1
    page.get_by_text("Finished: 2 images").first.wait_for()
    assert page.locator("#foci-gallery img").count() >= 2


@needs_chromium
def test_stop_stays_in_view_at_1280_by_800_while_generating(browser: Any, live_ui: LiveUI) -> None:
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    try:
        page.goto(live_ui.url + "/")
        page.locator("#foci-generate").wait_for(state="visible")
        _slow_steps(page, 60)
        page.locator("#foci-advanced input[type=checkbox]").uncheck()  # the default layout
        page.locator("#foci-prompt textarea").fill("a slow picture in a small window")
        page.locator("#foci-generate").click()
        page.locator("#foci-preview img").first.wait_for(state="visible")  # the live preview is in the layout
        page.evaluate("() => window.scrollTo(0, 0)")
        box = page.locator("#foci-stop").bounding_box()
        assert box is not None and box["y"] >= 0 and box["y"] + box["height"] <= 800, box
        assert box["x"] >= 0 and box["x"] + box["width"] <= 1280, box
        page.locator("#foci-stop").click()
        page.get_by_text("Stopped").first.wait_for()
    finally:
        context.close()


@needs_chromium
def test_lora_rows_show_whole_labels_and_names(page: Any) -> None:
    _open_advanced(page)
    page.get_by_role("tab", name="Models").click()
    enable = page.locator("#foci-right label:has(input[type=checkbox])", has_text="Enable").first
    enable.wait_for(state="visible")
    # the whole label shows ("Enable", not "Ena"), the name box has room for a file name, the row fits the column
    text = enable.locator("span", has_text="Enable").first
    assert text.evaluate("span => span.scrollWidth <= span.clientWidth + 1 && span.clientWidth > 0")
    text_box, column = text.bounding_box(), page.locator("#foci-right").bounding_box()
    assert text_box is not None and column is not None and text_box["width"] >= 40, text_box
    name = page.get_by_label("LoRA 1").first.bounding_box()
    assert name is not None and name["width"] >= 200, name
    weight = page.get_by_label("LoRA 1 Weight").first.bounding_box()
    assert weight is not None and weight["x"] + weight["width"] <= column["x"] + column["width"] + 1, (weight, column)


@needs_chromium
def test_the_preset_dropdown_shows_the_active_preset_on_first_load(page: Any) -> None:
    _open_advanced(page)
    assert page.locator("#foci-preset input").input_value() == "default"


@needs_chromium
def test_skip_abandons_the_current_image(page: Any, live_ui: LiveUI) -> None:
    prompt = "two pictures, one skipped"
    _open_advanced(page)
    page.locator("#foci-image-number input[type=number]").fill("2")
    page.locator("#foci-image-number input[type=number]").press("Enter")
    page.get_by_role("tab", name="Advanced").click()
    page.locator("#foci-developer input[type=checkbox]").check()
    page.get_by_role("tab", name="Overrides").click()
    page.locator("#foci-overwrite-step input").fill("40")
    page.locator("#foci-prompt textarea").fill(prompt)
    page.locator("#foci-generate").click()
    page.get_by_text("image 1/2").first.wait_for()
    page.locator("#foci-skip").click()
    page.get_by_text("Finished: 1 image, 1 skipped").first.wait_for()
    (job,) = [job for job in live_ui.store.list(limit=1000) if job.task.prompt == prompt]
    assert job.state is JobState.DONE and job.skipped_images == 1 and len(job.images) == 1
    # the image being sampled when Skip lands is dropped: normally image 1; on a very busy machine image 1 may
    # already be done, and then image 2 is the skipped one
    assert job.images[0].seed in (job.task.seed, job.task.seed + 1)


def test_a_failed_job_shows_its_error_once_on_the_progress_line(tmp_path: Path, tiny_checkpoint: Path,
                                                                engine: Engine) -> None:
    store = JobStore(tmp_path / "jobs.sqlite3")
    blocks = build_ui(store=store, bus=EventBus(), worker=None, engine=engine, settings=FociSettings(),
                      output_dir=engine.output_dir, defaults=_defaults(tiny_checkpoint), root=tmp_path)
    job = store.submit(GenerationTask(prompt="a doomed picture", **_defaults(tiny_checkpoint)))
    store.claim_next(worker="w")
    failed = store.fail(job.id, "the model file is damaged", worker="w")
    shown = [JobImage(path="earlier.png", seed=1, width=64, height=64)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a gr.Warning pop-up (outside an event: a UserWarning) would cover the line
        preview, progress, gallery, *_ = blocks.controller._finished(failed, shown)
    assert "Failed: the model file is damaged" in progress and "foci-failed" in progress
    assert [caption for _, caption in gallery] == ["seed 1"]  # the images shown so far stay


def test_the_aspect_ratios_heading_names_the_current_size(tmp_path: Path, tiny_checkpoint: Path,
                                                          engine: Engine) -> None:
    from foci.apps.ui_layout import aspect_heading

    blocks = build_ui(store=JobStore(tmp_path / "jobs.sqlite3"), bus=EventBus(), worker=None, engine=engine,
                      settings=FociSettings(), output_dir=engine.output_dir, defaults=_defaults(tiny_checkpoint),
                      root=tmp_path)
    import gradio as gr

    labels = [block.label for block in blocks.blocks.values() if isinstance(block, gr.Accordion)]
    assert "Aspect Ratios: 64×64 (1:1)" in labels
    assert aspect_heading("1152*896") == "Aspect Ratios: 1152×896 (9:7)"


def test_preset_switch_fills_the_controls(tmp_path: Path, tiny_checkpoint: Path, engine: Engine) -> None:
    blocks = build_ui(store=JobStore(tmp_path / "jobs.sqlite3"), bus=EventBus(), worker=None, engine=engine,
                      settings=FociSettings(), output_dir=tmp_path, defaults=_defaults(tiny_checkpoint),
                      root=tmp_path)
    ui = blocks.controller
    current = values_from_task(ui.default_task, lora_rows=ui.lora_rows) | {"prompt": "my own prompt", "seed": "5"}
    updates = dict(zip(ui.control_names, ui.load_preset("anime", *[current[name] for name in ui.control_names]),
                       strict=True))
    assert updates["prompt"] == "my own prompt" and updates["seed"] == "5"
    assert _prop(updates["guidance_scale"]) == 6.0 and _prop(updates["guidance_scale"], "interactive") is True
    assert updates["performance"] == "Speed"
    assert updates["base_model"] != tiny_checkpoint.name  # the preset's own model
    task = task_from_values({name: _prop(value) for name, value in updates.items()}, lora_rows=ui.lora_rows)
    assert task.guidance_scale == 6.0 and task.prompt == "my own prompt"


def _prop(update: Any, name: str = "value") -> Any:
    """A property of an event handler's update (``gr.update`` dict or component), or a plain value itself."""
    if isinstance(update, dict):
        return update.get(name)
    return getattr(update, name, update if name == "value" else None)


def _offline_ui(tmp_path: Path, tiny_checkpoint: Path, engine: Engine, **defaults: Any) -> Any:
    return build_ui(store=JobStore(tmp_path / "jobs.sqlite3"), bus=EventBus(), worker=None, engine=engine,
                    settings=FociSettings(), output_dir=tmp_path, defaults=_defaults(tiny_checkpoint) | defaults,
                    root=tmp_path).controller


def test_restricted_performance_locks_and_restores_the_controls(tmp_path: Path, tiny_checkpoint: Path,
                                                               engine: Engine) -> None:
    ui = _offline_ui(tmp_path, tiny_checkpoint, engine)
    own = values_from_task(GenerationTask(guidance_scale=6.5, sharpness=3.0, sampler="euler_ancestral",
                                          scheduler="normal", adaptive_cfg=5.0, refiner_model="r.safetensors",
                                          refiner_switch=0.6, refiner_swap_method="separate",
                                          adm_scaler_positive=1.2, adm_scaler_negative=0.9, adm_scaler_end=0.4),
                           lora_rows=0)
    current = [own[name] for name in RESTRICTED_CONTROLS]

    def shown(updates: list[Any]) -> tuple[dict[str, Any], set[Any], Any, Any]:
        controls = dict(zip(RESTRICTED_CONTROLS, updates[:len(RESTRICTED_CONTROLS)], strict=True))
        return ({name: _prop(update) for name, update in controls.items()},
                {_prop(update, "interactive") for update in controls.values()}, updates[-2].visible, updates[-1])

    values, interactive, negative_visible, saved = shown(ui.change_performance("Lightning", None, *current))
    assert values == {name: own[name] for name in RESTRICTED_CONTROLS} | {
                      "guidance_scale": 1.0, "sharpness": 0.0, "sampler": "euler", "scheduler": "sgm_uniform",
                      "adaptive_cfg": 1.0, "refiner_model": "None", "refiner_switch": 1.0, "adm_scaler_positive": 1.0,
                      "adm_scaler_negative": 1.0, "adm_scaler_end": 0.0, "refiner_swap_method": "separate"}
    assert interactive == {False} and negative_visible is False
    assert saved == {name: own[name] for name in RESTRICTED_CONTROLS}

    # Lightning → Hyper-SD: still locked, the new mode's sampler shown, the user's values still kept.
    values, interactive, negative_visible, saved_again = shown(
        ui.change_performance("Hyper-SD", saved, *[values[name] for name in RESTRICTED_CONTROLS]))
    assert (values["sampler"], values["scheduler"], interactive) == ("dpmpp_sde_gpu", "karras", {False})
    assert saved_again == saved

    # Back to Speed: unlocked, the negative prompt back, the values from before Lightning restored.
    values, interactive, negative_visible, cleared = shown(
        ui.change_performance("Speed", saved_again, *[values[name] for name in RESTRICTED_CONTROLS]))
    assert values == {name: own[name] for name in RESTRICTED_CONTROLS}
    assert interactive == {True} and negative_visible is True and cleared is None
    # Quality → Speed changes nothing.
    values, interactive, _, cleared = shown(ui.change_performance("Quality", None, *current))
    assert values == {name: own[name] for name in RESTRICTED_CONTROLS} and interactive == {True} and cleared is None

    assert forced_control_values("Speed") is None and forced_control_values("warp") is None
    assert forced_control_values("extreme_speed")["sampler"] == "lcm"
    assert performance_lock("Extreme Speed", own).locked


def test_loading_a_restricted_task_locks_and_saves_defaults(tmp_path: Path, tiny_checkpoint: Path,
                                                             engine: Engine) -> None:
    ui = _offline_ui(tmp_path, tiny_checkpoint, engine, guidance_scale=5.0)
    task = GenerationTask(performance="Lightning", guidance_scale=1.0, sampler="euler", scheduler="sgm_uniform",
                          sharpness=2.5, base_model=tiny_checkpoint.name, styles=[])
    updates = ui._restore(task)
    controls = dict(zip(ui.control_names, updates, strict=False))
    assert _prop(controls["guidance_scale"]) == 1.0 and _prop(controls["guidance_scale"], "interactive") is False
    assert _prop(controls["sharpness"]) == 0.0 and controls["negative_prompt"].visible is False
    saved = updates[-1]
    # Forced-looking values were no choice: Speed brings back the UI defaults; other values are kept.
    assert saved["guidance_scale"] == 5.0 and saved["sampler"] == "dpmpp_2m_sde_gpu" and saved["sharpness"] == 2.5
    # The task a Generate click would build carries the forced values.
    values = {name: _prop(update) for name, update in controls.items()}
    built = task_from_values(values, lora_rows=ui.lora_rows)
    assert (built.performance, built.guidance_scale, built.sampler) == ("Lightning", 1.0, "euler")
    # A UI whose defaults are restricted starts locked.
    locked = _offline_ui(tmp_path / "second", tiny_checkpoint, engine, performance="Hyper-SD")
    assert locked._load_lock(values_from_task(locked.default_task, lora_rows=0)).locked


def test_controls_come_from_the_field_table(tmp_path: Path, tiny_checkpoint: Path, engine: Engine) -> None:
    from foci.fields import task_fields

    ui = _offline_ui(tmp_path, tiny_checkpoint, engine)
    controls = ui._fields.components
    for facts in task_fields():
        if facts.ui is None or facts.ui.kind not in ("slider", "number"):
            continue
        top = ui.settings.default_max_image_number if facts.name == "image_number" else facts.le
        assert (controls[facts.name].minimum, controls[facts.name].maximum) == (facts.ge, top), facts.name
        assert controls[facts.name].label == facts.ui.label
    assert list(controls["sampler"].choices) == [(name, name) for name in SAMPLERS]
    values = values_from_task(ui.default_task, lora_rows=ui.lora_rows)
    with pytest.raises(UIError, match="performance: unknown performance 'Turbo'"):  # the API's admission check
        ui.make_task(values | {"performance": "Turbo"}, random=False)
    with pytest.raises(UIError, match="styles: "):
        ui.make_task(values | {"styles": ["No Such Style"]}, random=False)


@needs_chromium
def test_progress_shows_a_model_download(browser: Any, tiny_checkpoint: Path, tmp_path: Path) -> None:
    """Issue 16.3: while a job downloads its checkpoint (from a slow loopback mirror), the progress area says
    which file and how many bytes of how many."""
    import hashlib

    import uvicorn
    from fastapi import FastAPI

    from foci.files.download_hints import human_bytes
    from foci.files.downloads import CatalogueEntry, Downloader
    from tests.http_fixtures import Fault, FileServer

    data = tiny_checkpoint.read_bytes()
    name = "slow-base.safetensors"
    with FileServer({"/slow.safetensors": data}) as mirror:
        mirror.fail_next("/slow.safetensors", Fault(pace=0.008))
        entry = CatalogueEntry(name=name, url=mirror.url("/slow.safetensors"), folder="checkpoints", size=len(data),
                               sha256=hashlib.sha256(data).hexdigest(), licence="test")
        engine = Engine(models_dir=tmp_path / "models", output_dir=tmp_path / "out", device="cpu", precision="fp32",
                        downloader=Downloader(environ={}), catalogue={name: entry})
        store, bus = JobStore(tmp_path / "jobs.sqlite3"), EventBus()
        worker = Worker(store, engine, bus, poll_interval=0.05, progress_interval=0.1)
        blocks = build_ui(store=store, bus=bus, worker=worker, engine=engine, settings=FociSettings(),
                          output_dir=engine.output_dir, defaults={**_defaults(tiny_checkpoint), "base_model": name},
                          root=tmp_path)
        port = _free_port()
        server = uvicorn.Server(uvicorn.Config(mount_ui(FastAPI(), blocks), host="127.0.0.1", port=port,
                                               log_level="warning", lifespan="on"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        worker.start()
        context = browser.new_context(viewport={"width": 1400, "height": 1000})
        try:
            _wait_for(lambda: server.started, 30, "uvicorn")
            context.set_default_timeout(TIMEOUT_MS)
            tab = context.new_page()
            tab.goto(f"http://127.0.0.1:{port}/")
            tab.locator("#foci-generate").wait_for(state="visible")
            _record_progress_texts(tab)
            tab.locator("#foci-prompt textarea").fill("a downloaded cat")
            tab.locator("#foci-generate").click()
            shown = tab.get_by_text(f"Downloading {name} … ").first
            shown.wait_for()
            assert f" / {human_bytes(len(data))}" in shown.inner_text()
            tab.get_by_text("Finished: 1 image").first.wait_for()
            texts = tab.evaluate("window.fociTexts")
            downloading = [text for text in texts if text.startswith(f"Downloading {name} … ")]
            assert len(set(downloading)) >= 2, texts  # the byte count moves
            assert any(text.startswith("Sampling step") for text in texts), texts
        finally:
            context.close()
            server.should_exit = True
            thread.join(10)
            worker.stop(timeout=30)
    assert (tmp_path / "models" / "checkpoints" / name).read_bytes() == data

# ------------------------------------------------------------------------------------------ Input Image panel
def _open_input_tab(page: Any, name: str) -> None:
    page.locator("#foci-input-image input[type=checkbox]").check()
    page.locator("#foci-input-panel").wait_for(state="visible")
    page.get_by_role("tab", name=name).click()


def _upload_to_editor(page: Any, picture: Path) -> Any:
    """Upload ``picture`` as the inpaint canvas's background; the editor once the image is on the canvas."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    editor = page.locator("#foci-inpaint-editor")
    editor.locator(".zoom-number span").wait_for()  # the drawing surface (loaded when first shown) is set up
    for attempt in range(3):  # a file given while it still sets up can be dropped: give it again, as a new file
        copy = picture.with_name(f"{picture.stem}-{attempt}{picture.suffix}")
        shutil.copyfile(picture, copy)
        editor.locator("input[type=file]").set_input_files(str(copy))
        try:  # the background on the canvas is an undoable edit
            editor.locator("button[aria-label=Undo]:not([disabled])").wait_for(timeout=15_000)
            break
        except PlaywrightTimeout:
            if attempt == 2:
                raise
    editor.scroll_into_view_if_needed()
    return editor


def _queued(live_ui: LiveUI, prompt: str) -> Any:
    return _wait_for(lambda: next((job for job in live_ui.store.list(limit=1000) if job.task.prompt == prompt), None),
                     message=f"the job {prompt!r}")


def _stored_pixels(live_ui: LiveUI, digest: str | None) -> Any:
    import numpy as np
    from PIL import Image

    from foci.files.input_images import InputImageStore

    assert digest is not None
    with Image.open(InputImageStore(live_ui.output_dir / "inputs").path(digest)) as image:
        return np.asarray(image)


def _gradient(width: int, height: int) -> Any:
    import numpy as np

    pixels = np.zeros((height, width, 3), dtype=np.uint8)
    pixels[:, :, 0] = (np.arange(width) * 255 // max(width - 1, 1))[None, :]
    pixels[:, :, 1] = (np.arange(height) * 255 // max(height - 1, 1))[:, None]
    pixels[:, :, 2] = 90
    return pixels


@needs_chromium
def test_a_mask_drawn_on_the_canvas_is_queued_with_the_image(page: Any, live_ui: LiveUI, tmp_path: Path) -> None:
    import numpy as np
    from PIL import Image

    width, height = 200, 136
    pixels = _gradient(width, height)
    Image.fromarray(pixels).save(tmp_path / "photo.png")
    _open_input_tab(page, "Inpaint or Outpaint")
    editor = _upload_to_editor(page, tmp_path / "photo.png")
    # The image sits centred on the canvas element, shown at the editor's zoom: draw a stroke with the mouse from
    # image pixel (40, 30) to (70, 30), with the brush (the active tool after an upload).
    box = editor.locator("canvas").first.bounding_box()
    zoom = float(editor.locator(".zoom-number span").inner_text().rstrip("%")) / 100

    def screen(x: float, y: float) -> tuple[float, float]:
        return (box["x"] + box["width"] / 2 + (x - width / 2) * zoom,
                box["y"] + box["height"] / 2 + (y - height / 2) * zoom)

    page.mouse.move(*screen(40, 30))
    page.mouse.down()
    for x in range(40, 71, 3):
        page.mouse.move(*screen(x, 30))
    page.mouse.up()
    page.locator("#foci-prompt textarea").fill("a kite in the corner")
    page.locator("#foci-generate").click()

    job = _queued(live_ui, "a kite in the corner")
    task = job.task
    assert task.input_mode == "inpaint" and task.uov_method == "Disabled" and task.outpaint == []
    assert task.inpaint_method == "Inpaint or Outpaint (default)" and task.inpaint_engine is None
    image = _stored_pixels(live_ui, task.input_image)
    assert np.array_equal(image[:, :, :3], pixels)  # the canvas gives back the uploaded pixels, full size
    mask = _stored_pixels(live_ui, task.inpaint_mask)
    assert mask.shape == (height, width)
    assert mask[30, 40:71].min() == 255  # white along the stroke …
    assert mask[:, 120:].max() == 0 and mask[100:, :].max() == 0  # … and black away from it
    done = _wait_for(lambda: (j := _queued(live_ui, "a kite in the corner")).state.final and j, timeout=600,
                     message="the inpaint job to end")
    assert done.state is JobState.DONE, done.error
    (result,) = done.images
    picture = np.asarray(Image.open(live_ui.output_dir / result.path).convert("RGB"))
    assert picture.shape == pixels.shape
    # beyond the mask's bounding box plus the ~32-pixel feather every pixel is the input's, exactly
    assert np.array_equal(picture[:, 160:], pixels[:, 160:]) and np.array_equal(picture[110:], pixels[110:])
    page.locator("#foci-generate").wait_for(state="visible")


@needs_chromium
def test_bad_input_images_queue_nothing(page: Any, live_ui: LiveUI, tmp_path: Path) -> None:
    from PIL import Image

    Image.fromarray(_gradient(64, 48)).save(tmp_path / "photo.png")
    before = len(live_ui.store.list(limit=1000))
    _open_input_tab(page, "Inpaint or Outpaint")
    _upload_to_editor(page, tmp_path / "photo.png")
    page.locator("#foci-prompt textarea").fill("nothing painted")
    page.locator("#foci-generate").click()
    page.get_by_text("nothing to inpaint").first.wait_for()  # not a silent text-to-image

    page.get_by_role("tab", name="Upscale or Variation").click()
    (tmp_path / "notes.png").write_text("not a picture")
    page.locator("#foci-uov-image input[type=file]").set_input_files(str(tmp_path / "notes.png"))
    page.get_by_text("the uploaded file is not an image file").first.wait_for()
    page.locator("#foci-uov-method").get_by_label("Vary (Strong)").check()
    page.locator("#foci-generate").click()
    page.get_by_text('upload an image in the "Upscale or Variation" tab').first.wait_for()
    assert len(live_ui.store.list(limit=1000)) == before


def _vary_subtle(page: Any, picture: Path, prompt: str) -> None:
    _open_input_tab(page, "Upscale or Variation")
    page.locator("#foci-uov-image input[type=file]").set_input_files(str(picture))
    page.locator("#foci-uov-image img").first.wait_for()
    page.locator("#foci-uov-method").get_by_label("Vary (Subtle)").check()
    page.locator("#foci-prompt textarea").fill(prompt)
    page.locator("#foci-generate").click()


@needs_chromium
def test_vary_queues_the_uploaded_file_by_its_hash(page: Any, live_ui: LiveUI, tmp_path: Path) -> None:
    import hashlib

    from PIL import Image

    Image.fromarray(_gradient(96, 64)).save(tmp_path / "photo.jpg", quality=90)
    _vary_subtle(page, tmp_path / "photo.jpg", "a subtle variation")
    task = _queued(live_ui, "a subtle variation").task
    assert task.input_mode == "uov" and task.uov_method == "Vary (Subtle)" and task.inpaint_mask is None
    assert task.input_image == hashlib.sha256((tmp_path / "photo.jpg").read_bytes()).hexdigest()  # the file as sent
    assert _stored_pixels(live_ui, task.input_image).shape == (64, 96, 3)
    page.locator("#foci-generate").wait_for(state="visible")


@needs_chromium
def test_vary_makes_a_picture_of_the_clamped_input_size(page: Any, live_ui: LiveUI, tmp_path: Path) -> None:
    from PIL import Image

    # §2.13: a 512×512 input has shape-ceil 512 < 1024, so it is resized to shape-ceil 1024: 1024×1024.
    Image.fromarray(_gradient(512, 512)).save(tmp_path / "square.png")
    _vary_subtle(page, tmp_path / "square.png", "vary a square")
    job = _wait_for(lambda: (j := _queued(live_ui, "vary a square")).state.final and j, timeout=600,
                    message="the vary job to end")
    assert job.state is JobState.DONE, job.error
    assert [(image.width, image.height) for image in job.images] == [(1024, 1024)]


def test_restoring_a_task_fills_the_input_image_panel(tmp_path: Path, tiny_checkpoint: Path, engine: Engine) -> None:
    from PIL import Image

    ui = _offline_ui(tmp_path, tiny_checkpoint, engine)
    picture = tmp_path / "photo.png"
    Image.fromarray(_gradient(32, 24)).save(picture)
    digest = engine.inputs.put_file(picture)
    task = GenerationTask(prompt="restored", base_model=tiny_checkpoint.name, styles=[], input_image=digest,
                          uov_method="Upscale (2x)")
    updates = ui._restore(task)
    from foci.apps.webui import PANEL_RESTORED

    start = len(ui.control_names)
    panel = dict(zip(PANEL_RESTORED, updates[start:start + len(PANEL_RESTORED)], strict=True))
    assert panel["input_image_enabled"] is True and panel["input_tab"] == "uov"
    assert panel["uov_method"] == "Upscale (2x)" and panel["uov_image"].shape == (24, 32, 3)
    assert _prop(panel["input_tabs"], "selected") == "uov"
    assert updates[-1] is None  # the saved-values state stays last

    inpaint = GenerationTask(prompt="restored", base_model=tiny_checkpoint.name, styles=[], input_image="f" * 64,
                             outpaint=["Left"], inpaint_method="Improve Detail (face, hand, eyes, etc.)",
                             inpaint_strength=0.3)
    with pytest.warns(UserWarning, match="upload it again"):  # gr.Warning outside an event
        restored = ui._restore(inpaint)
    panel = dict(zip(PANEL_RESTORED, restored[start:start + len(PANEL_RESTORED)], strict=True))
    assert panel["input_tab"] == "inpaint" and panel["inpaint_advanced"] is True
    assert panel["inpaint_strength"] == 0.3 and panel["inpaint_engine"] == "None"
    assert panel["inpaint_editor"] == {"__type__": "update"}  # not stored here: the canvas keeps what it shows
    assert _prop(panel["quick_list"], "visible") is True and _prop(panel["outpaint"], "visible") is False

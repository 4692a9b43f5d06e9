"""The Fooocus layout of the browser UI and the wiring of its events (a mixin of
:class:`~foci.apps.webui.FociUI`, whose methods handle the events)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import gradio as gr

from foci.apps.ui_controls import RESTRICTED_CONTROLS, progress_html, values_from_task
from foci.apps.ui_history import HISTORY_PATH
from foci.fields import FieldFacts, task_fields
from foci.records.metadata import DEFAULT_VAE_LABEL, NO_MODEL_LABEL
from foci.settings.aspect_ratios import aspect_label
from foci.settings.config import FociSettings, available_presets
from foci.settings.performance import Performance
from foci.task import GenerationTask

if TYPE_CHECKING:
    from foci.apps.webui import FociUI

PROMPT_PLACEHOLDER = "Describe the picture you want… (or paste image parameters as JSON)"
IDLE_TEXT = "Ready: type a prompt and press Generate"
IMAGE_AREA_HEIGHT = 440
"""Height in pixels of the preview and gallery row: with the prompt row under it, Stop stays in a 1280×800 window."""


class _Field:
    """Names the controls that map to task fields (component ↔ name) while the layout is being built."""

    def __init__(self) -> None:
        self.components: dict[str, gr.components.Component] = {}

    def __call__(self, name: str, component: gr.components.Component) -> gr.components.Component:
        self.components[name] = component
        return component


class FociBlocks(gr.Blocks):
    """``gr.Blocks`` that carries its :class:`FociUI` controller, so ``mount_ui`` can add the history page."""

    controller: FociUI


class FociLayout:
    """Lays out every control (:meth:`build`) and wires the events to the handlers of
    :class:`~foci.apps.webui.FociUI`, which this is a mixin of (the attributes below are the UI's)."""

    settings: FociSettings
    default_task: GenerationTask
    lora_rows: int
    title: str
    preset: str | None
    root: Path
    random_by_default: bool
    _fields: _Field
    _input: dict[str, Any]

    def build(self) -> FociBlocks:
        """Lay out every control and wire the events."""
        field = self._fields
        values = values_from_task(self.default_task, lora_rows=self.lora_rows)
        initial = self._load_lock(values)
        values.update(initial.values)
        settings = self.settings
        with FociBlocks(title=self.title, analytics_enabled=False) as blocks:
            blocks.controller = self
            saved = gr.State(initial.saved)
            with gr.Row(elem_id="foci-main"):
                with gr.Column(scale=2, elem_id="foci-left"):
                    with gr.Row(elem_id="foci-images"):  # preview beside the gallery: Stop stays in view
                        preview = gr.Image(label="Preview", format="png", interactive=False, visible=False,
                                           height=IMAGE_AREA_HEIGHT, elem_id="foci-preview", scale=1, min_width=160)
                        gallery = gr.Gallery(label="Results", format="png", columns=2, height=IMAGE_AREA_HEIGHT,
                                             object_fit="contain", elem_id="foci-gallery", interactive=False,
                                             scale=2)
                    progress = gr.HTML(progress_html(0, IDLE_TEXT, state="idle"), elem_id="foci-progress")
                    with gr.Row(elem_id="foci-prompt-row"):
                        prompt = field("prompt", gr.Textbox(values["prompt"], lines=3, show_label=False,
                                                            placeholder=PROMPT_PLACEHOLDER, scale=8,
                                                            elem_id="foci-prompt"))
                        with gr.Column(scale=1, min_width=120):
                            generate = gr.Button("Generate", variant="primary", elem_id="foci-generate")
                            load_parameters = gr.Button("Load Parameters", visible=False,
                                                        elem_id="foci-load-parameters")
                            with gr.Row():
                                stop = gr.Button("Stop", variant="stop", visible=False, elem_id="foci-stop",
                                                 min_width=50)
                                skip = gr.Button("Skip", visible=False, elem_id="foci-skip", min_width=50)
                    with gr.Row(elem_id="foci-checkboxes"):
                        input_enabled = gr.Checkbox(False, label="Input Image", elem_id="foci-input-image",
                                                    container=False)
                        advanced = gr.Checkbox(settings.default_advanced_checkbox, label="Advanced",
                                               elem_id="foci-advanced", container=False)
                        forever = gr.Checkbox(False, label="Generate forever", elem_id="foci-forever",
                                              container=False)
                    panel = self._input_panel(input_enabled)
                right = gr.Column(scale=1, visible=settings.default_advanced_checkbox, elem_id="foci-right")
                with right, gr.Tabs():
                    with gr.Tab("Settings", elem_id="foci-tab-settings"):
                        presets = available_presets(self.root)
                        preset = gr.Dropdown(presets, value=self.preset if self.preset in presets else None,
                                             label="Preset", elem_id="foci-preset")
                        field("performance", gr.Radio([mode.value for mode in Performance],
                                                      value=values["performance"], label="Performance",
                                                      elem_id="foci-performance"))
                        with gr.Accordion(aspect_heading(values["aspect_ratio"]), open=False) as aspect_box:
                            field("aspect_ratio", gr.Radio(self._aspect_choices(values["aspect_ratio"]),
                                                           value=values["aspect_ratio"], show_label=False,
                                                           elem_id="foci-aspect"))
                        self._controls_at("settings", values, locked=initial.locked)
                        field("negative_prompt", gr.Textbox(values["negative_prompt"], lines=2,
                                                            label="Negative Prompt",
                                                            placeholder="What the picture should avoid",
                                                            visible=not initial.locked,
                                                            elem_id="foci-negative"))
                        random = gr.Checkbox(self.random_by_default, label="Random", elem_id="foci-random")
                        field("seed", gr.Textbox(values["seed"], label="Seed", max_lines=1,
                                                        visible=not self.random_by_default,
                                                        elem_id="foci-seed"))
                        gr.HTML(f'<a href="{HISTORY_PATH}" target="_blank" id="foci-history-link">'
                                'History of generated images</a>')
                        image_file = gr.File(label="Load parameters from an image", file_types=["image"],
                                             type="filepath", elem_id="foci-metadata-file")
                    with gr.Tab("Styles", elem_id="foci-tab-styles"):
                        style_search = gr.Textbox(label="Search styles", placeholder="Type to filter styles",
                                                  max_lines=1, elem_id="foci-style-search")
                        styles = field("styles", gr.CheckboxGroup(self._style_choices(values["styles"]),
                                                                  value=values["styles"], label="Styles",
                                                                  elem_id="foci-styles"))
                    with gr.Tab("Models", elem_id="foci-tab-models"):
                        base = field("base_model", gr.Dropdown(self._model_choices(values["base_model"]),
                                                               value=values["base_model"], label="Base Model",
                                                               allow_custom_value=True, elem_id="foci-base"))
                        refiner = field("refiner_model", gr.Dropdown(
                            [NO_MODEL_LABEL, *self._model_choices(values["base_model"])],
                            value=values["refiner_model"], label="Refiner", allow_custom_value=True,
                            interactive=not initial.locked, elem_id="foci-refiner"))
                        self._controls_at("models", values, locked=initial.locked)
                        lora_names: list[gr.Dropdown] = []
                        for row in range(self.lora_rows):  # name beside "Enable", weight under them
                            with gr.Group(elem_classes="foci-lora"):
                                with gr.Row():
                                    field(f"lora_enabled_{row}", gr.Checkbox(
                                        values[f"lora_enabled_{row}"], label="Enable", scale=0, min_width=100,
                                        elem_classes="foci-lora-enable"))
                                    lora_names.append(field(f"lora_name_{row}", gr.Dropdown(
                                        [NO_MODEL_LABEL, *self._files("loras")], value=values[f"lora_name_{row}"],
                                        label=f"LoRA {row + 1}", allow_custom_value=True, scale=1)))
                                field(f"lora_weight_{row}", gr.Slider(
                                    settings.default_loras_min_weight, settings.default_loras_max_weight,
                                    value=values[f"lora_weight_{row}"], step=0.01, label=f"LoRA {row + 1} Weight"))
                        refresh = gr.Button("Refresh files", size="sm")
                    with gr.Tab("Advanced", elem_id="foci-tab-advanced"):
                        self._controls_at("advanced", values, locked=initial.locked)
                        developer = gr.Checkbox(settings.default_developer_debug_mode_checkbox,
                                                label="Developer options", elem_id="foci-developer")
                        with gr.Column(visible=settings.default_developer_debug_mode_checkbox) as developer_box:
                            self._developer_controls(values, locked=initial.locked)
            self._wire(dict(
                preview=preview, progress=progress, gallery=gallery, prompt=prompt, generate=generate,
                load_parameters=load_parameters, stop=stop, skip=skip, advanced=advanced, forever=forever,
                right=right, preset=preset, random=random, aspect_box=aspect_box, image_file=image_file,
                style_search=style_search, styles=styles, base=base, refiner=refiner, lora_names=lora_names,
                refresh=refresh, developer=developer, developer_box=developer_box, saved=saved, **panel))
        return blocks

    def _controls_at(self, place: str, values: dict[str, Any], *, locked: bool) -> None:
        """The controls of every field the table puts at ``place``, in field order."""
        for facts in task_fields():
            if facts.ui is not None and facts.ui.place == place:
                self._fields(facts.name, self._control(facts, values[facts.name], locked=locked))

    def _control(self, facts: FieldFacts, value: Any, *, locked: bool) -> gr.components.Component:
        """The Gradio component of a field's ``Control``: range from the field's bounds (the image number up to
        the server's maximum), choices from its type; restricted controls locked while ``locked``."""
        ui = facts.ui
        assert ui is not None
        options: dict[str, Any] = {"label": ui.label}
        if ui.elem_id:
            options["elem_id"] = ui.elem_id
        if facts.name in RESTRICTED_CONTROLS:
            options["interactive"] = not locked
        maximum = self.settings.default_max_image_number if facts.name == "image_number" else facts.le
        if ui.kind == "slider":
            return gr.Slider(facts.ge, maximum, value=value, step=ui.step, **options)
        if ui.kind == "number":
            return gr.Number(value, precision=0 if facts.type is int else None, minimum=facts.ge, maximum=maximum,
                             **options)
        if ui.kind == "checkbox":
            return gr.Checkbox(value, **options)
        if ui.kind == "radio":
            return gr.Radio(list(facts.choices or ()), value=value, **options)
        if ui.kind == "dropdown" and ui.convert == "vae":
            return gr.Dropdown([DEFAULT_VAE_LABEL, *self._files("vae")], value=value, allow_custom_value=True,
                               **options)
        if ui.kind == "dropdown":
            return gr.Dropdown(list(facts.choices or ()), value=value, **options)
        raise ValueError(f"field {facts.name!r}: no generic control of kind {ui.kind!r}")

    def _developer_controls(self, values: dict[str, Any], *, locked: bool) -> None:
        field = self._fields
        with gr.Tabs():
            with gr.Tab("Sampling"):
                self._controls_at("sampling", values, locked=locked)
            with gr.Tab("Overrides"):
                self._controls_at("overrides", values, locked=locked)
            with gr.Tab("FreeU"):  # Fooocus's slider ranges, narrower than the 0–10 the task accepts
                field("freeu_enabled", gr.Checkbox(values["freeu_enabled"], label="Enabled"))
                field("freeu_b1", gr.Slider(0.0, 2.0, value=values["freeu_b1"], step=0.01, label="B1"))
                field("freeu_b2", gr.Slider(0.0, 2.0, value=values["freeu_b2"], step=0.01, label="B2"))
                field("freeu_s1", gr.Slider(0.0, 4.0, value=values["freeu_s1"], step=0.01, label="S1"))
                field("freeu_s2", gr.Slider(0.0, 4.0, value=values["freeu_s2"], step=0.01, label="S2"))

    # ---------------------------------------------------------------------------------------- events
    def _wire(self, parts: dict[str, Any]) -> None:
        fields = self._fields.components
        names = {component: name for name, component in fields.items()}
        panel = self._input
        inputs = {*fields.values(), *panel.values(), parts["random"], parts["forever"]}
        running = [parts["preview"], parts["progress"], parts["gallery"], parts["generate"], parts["stop"],
                   parts["skip"], fields["seed"]]
        all_fields = list(fields.values())

        def values_of(data: dict[Any, Any]) -> dict[str, Any]:
            return {names[component]: value for component, value in data.items() if component in names}

        def generate(data: dict[Any, Any], request: gr.Request) -> Iterator[list[Any]]:
            yield from self.generate(values_of(data), random=bool(data[parts["random"]]),
                                     forever=bool(data[parts["forever"]]), request=request,
                                     inputs={name: data[component] for name, component in panel.items()})

        parts["generate"].click(generate, inputs=inputs, outputs=running, concurrency_limit=None,
                                show_progress="hidden", api_visibility="private")
        parts["stop"].click(self.stop, outputs=[parts["stop"], parts["skip"]], concurrency_limit=None,
                            show_progress="hidden", api_visibility="private")
        parts["skip"].click(self.skip, concurrency_limit=None, show_progress="hidden", api_visibility="private")
        parts["forever"].change(self.set_forever, inputs=parts["forever"], show_progress="hidden",
                                api_visibility="private")
        parts["advanced"].change(lambda shown: gr.Column(visible=shown), inputs=parts["advanced"],
                                 outputs=parts["right"], show_progress="hidden", api_visibility="private")
        parts["developer"].change(lambda shown: gr.Column(visible=shown), inputs=parts["developer"],
                                  outputs=parts["developer_box"], show_progress="hidden", api_visibility="private")
        parts["random"].change(lambda is_random: gr.Textbox(visible=not is_random), inputs=parts["random"],
                               outputs=fields["seed"], show_progress="hidden", api_visibility="private")
        parts["prompt"].change(lambda text: gr.Button(visible=_looks_like_json(text)), inputs=parts["prompt"],
                               outputs=parts["load_parameters"], show_progress="hidden", api_visibility="private")
        fields["aspect_ratio"].change(lambda ratio: gr.Accordion(label=aspect_heading(ratio)),
                                      inputs=fields["aspect_ratio"], outputs=parts["aspect_box"],
                                      show_progress="hidden", api_visibility="private")
        restricted = [fields[name] for name in RESTRICTED_CONTROLS]
        fields["performance"].change(self.change_performance,
                                     inputs=[fields["performance"], parts["saved"], *restricted],
                                     outputs=[*restricted, fields["negative_prompt"], parts["saved"]],
                                     show_progress="hidden", api_visibility="private")
        restore_outputs = [*all_fields, *self._panel_outputs(parts), parts["random"], parts["load_parameters"],
                           parts["saved"]]
        parts["load_parameters"].click(self.load_from_text, inputs=parts["prompt"], outputs=restore_outputs,
                                       show_progress="hidden", api_visibility="private")
        parts["image_file"].upload(self.load_from_image, inputs=parts["image_file"], outputs=restore_outputs,
                                   show_progress="hidden", api_visibility="private")
        parts["style_search"].change(lambda search, selected: gr.CheckboxGroup(
            choices=self._style_choices(list(selected or []), search or "")),
            inputs=[parts["style_search"], parts["styles"]], outputs=parts["styles"], show_progress="hidden",
            api_visibility="private")
        parts["preset"].change(self.load_preset_and_lock, inputs=[parts["preset"], *all_fields],
                               outputs=[*all_fields, parts["saved"]], show_progress="hidden",
                               api_visibility="private")
        self._wire_input_panel(parts)
        model_dropdowns = [parts["base"], parts["refiner"], *parts["lora_names"]]
        parts["refresh"].click(self.refresh_files, inputs=[parts["base"]], outputs=model_dropdowns,
                               show_progress="hidden", api_visibility="private")


def aspect_heading(ratio: str | None) -> str:
    """The Aspect Ratios accordion's heading, naming the chosen size."""
    try:
        return f"Aspect Ratios: {aspect_label(ratio)}" if ratio else "Aspect Ratios"
    except ValueError:
        return "Aspect Ratios"


def _looks_like_json(text: str | None) -> bool:
    stripped = (text or "").strip()
    if not (stripped.startswith("{") and stripped.endswith("}")):
        return False
    try:
        return isinstance(json.loads(stripped), dict)
    except (json.JSONDecodeError, RecursionError):
        return False

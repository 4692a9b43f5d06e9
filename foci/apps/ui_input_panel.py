"""The Input Image panel's Gradio layout and events (a mixin of :class:`~foci.apps.webui.FociUI`); the
Gradio-free logic behind it is :mod:`foci.apps.ui_input_image`."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import gradio as gr

from foci.apps.ui_input_image import (
    ADVANCED_FIELDS,
    EXAMPLE_INPAINT_PROMPTS,
    INPUT_TABS,
    method_layout,
    panel_from_task,
)
from foci.engine.engine import Engine
from foci.fields import field_facts
from foci.files.input_images import MAX_INPUT_BYTES, check_image_bytes
from foci.records.image_input import ImageInputError
from foci.task import (
    INPAINT_DEFAULT,
    INPAINT_ENGINES,
    INPAINT_METHODS,
    OUTPAINT_DIRECTIONS,
    UOV_METHODS,
    GenerationTask,
)

PANEL_RESTORED: tuple[str, ...] = (
    "input_image_enabled", "input_tabs", "input_tab", "uov_image", "uov_method", "inpaint_editor", "inpaint_method",
    "inpaint_prompt", "quick_list", "outpaint", "inpaint_advanced", "invert_mask", "mask_dilate", "inpaint_engine",
    "inpaint_strength", "inpaint_respective_field",
)
"""The Input Image panel's parts a restored task (pasted metadata, dropped image) updates, in output order."""



class InputPanel:
    """Layout and events of the Input Image panel; its controls go to ``_input`` by their
    :data:`~foci.apps.ui_input_image.INPUT_CONTROLS` names."""

    engine: Engine
    _input: dict[str, Any]

    def _input_panel(self, enabled: gr.Checkbox) -> dict[str, Any]:
        """The Input Image panel under the prompt (hidden until "Input Image" is ticked): the Upscale or Variation
        and the Inpaint or Outpaint tabs. Its controls go to :attr:`_input` by their
        :data:`~foci.apps.ui_input_image.INPUT_CONTROLS` names; returns the layout parts the events need."""
        control = self._input
        control["input_image_enabled"] = enabled
        control["input_tab"] = gr.State("uov")
        layout = method_layout(INPAINT_DEFAULT)
        image_options: dict[str, Any] = dict(type="filepath", image_mode=None, format="png",
                                             sources=["upload", "clipboard"])
        with gr.Column(visible=False, elem_id="foci-input-panel") as panel, \
                gr.Tabs(selected="uov", elem_id="foci-input-tabs") as tabs:
            with gr.Tab("Upscale or Variation", id="uov", elem_id="foci-uov-tab") as uov_tab, gr.Row():
                control["uov_image"] = gr.Image(label="Image", height=300, elem_id="foci-uov-image",
                                                **image_options)
                control["uov_method"] = gr.Radio(list(UOV_METHODS), value="Disabled", label="Upscale or Variation",
                                                 elem_id="foci-uov-method")
            with gr.Tab("Inpaint or Outpaint", id="inpaint", elem_id="foci-inpaint-tab") as inpaint_tab, gr.Row():
                with gr.Column():
                    control["inpaint_editor"] = gr.ImageEditor(
                        label="Image — paint the area to change (white = repaint)", type="numpy",
                        image_mode="RGBA", format="png", sources=["upload", "clipboard"], transforms=(),
                        layers=False, brush=gr.Brush(colors=["#FFFFFF"], default_color="#FFFFFF",
                                                     color_mode="fixed"),
                        height=500, elem_id="foci-inpaint-editor")
                    control["inpaint_advanced"] = gr.Checkbox(False, label="Enable Advanced Masking Features",
                                                              elem_id="foci-inpaint-advanced")
                    control["inpaint_method"] = gr.Dropdown(list(INPAINT_METHODS), value=INPAINT_DEFAULT,
                                                            label="Method", elem_id="foci-inpaint-method")
                    control["inpaint_prompt"] = gr.Textbox(label="Inpaint Additional Prompt", lines=2,
                                                           placeholder="Describe what you want to inpaint.",
                                                           visible=layout.prompt_box,
                                                           elem_id="foci-inpaint-prompt")
                    quick_list = gr.Dataset(components=[control["inpaint_prompt"]], label="Additional Prompt "
                                            "Quick List", samples=[[text] for text in EXAMPLE_INPAINT_PROMPTS],
                                            visible=layout.quick_list, elem_id="foci-inpaint-quick-list")
                    control["outpaint"] = gr.CheckboxGroup(list(OUTPAINT_DIRECTIONS), value=[],
                                                           label="Outpaint Direction", visible=layout.outpaint,
                                                           elem_id="foci-outpaint")
                with gr.Column(visible=False, elem_id="foci-masking") as masking:
                    control["inpaint_mask_upload"] = gr.Image(label="Mask Upload (white = repaint)", height=300,
                                                              elem_id="foci-mask-upload", **image_options)
                    control["invert_mask"] = gr.Checkbox(False, label="Invert Mask When Generating",
                                                         elem_id="foci-invert-mask")
                    self._input_field_control("mask_dilate", "Mask Erode or Dilate", 0, step=1,
                                              elem_id="foci-mask-dilate")
                    control["inpaint_engine"] = gr.Dropdown(list(INPAINT_ENGINES), value=layout.engine,
                                                            label="Inpaint Engine", elem_id="foci-inpaint-engine")
                    self._input_field_control("inpaint_strength", "Inpaint Denoising Strength", layout.strength,
                                              step=0.001, elem_id="foci-inpaint-strength")
                    self._input_field_control("inpaint_respective_field", "Inpaint Respective Field",
                                              layout.respective_field, step=0.001,
                                              elem_id="foci-inpaint-respective-field")
        return dict(input_panel=panel, input_tabs=tabs, uov_tab=uov_tab, inpaint_tab=inpaint_tab,
                    quick_list=quick_list, masking=masking)

    def _input_field_control(self, name: str, label: str, value: float, *, step: float, elem_id: str) -> None:
        """A slider of the Input Image panel whose range is the task field's bounds."""
        facts = field_facts(name)  # strength and respective field: ``Strength | None`` keeps its 0…1 bounds inside
        low, high = (facts.ge, facts.le) if facts.ge is not None and facts.le is not None else (0.0, 1.0)
        self._input[name] = gr.Slider(low, high, value=value, step=step, label=label, elem_id=elem_id)

    def _wire_input_panel(self, parts: dict[str, Any]) -> None:
        """The Input Image panel's events: show it, track the selected tab, the method's controls and defaults,
        advanced masking, the quick list, and a check of each uploaded file."""
        panel = self._input
        hidden: dict[str, Any] = dict(show_progress="hidden", api_visibility="private")
        panel["input_image_enabled"].change(lambda shown: gr.Column(visible=shown),
                                            inputs=panel["input_image_enabled"], outputs=parts["input_panel"],
                                            **hidden)
        for tab in INPUT_TABS:
            parts[f"{tab}_tab"].select(lambda tab=tab: tab, outputs=panel["input_tab"], **hidden)
        # .input, not .change: restoring a task sets the method without resetting its restored values
        panel["inpaint_method"].input(self.change_inpaint_method, inputs=panel["inpaint_method"],
                                      outputs=self._method_outputs(parts), **hidden)
        panel["inpaint_advanced"].change(lambda shown: gr.Column(visible=shown), inputs=panel["inpaint_advanced"],
                                         outputs=parts["masking"], **hidden)
        parts["quick_list"].click(lambda sample: sample[0] if sample else gr.skip(), inputs=parts["quick_list"],
                                  outputs=panel["inpaint_prompt"], **hidden)
        for name in ("uov_image", "inpaint_mask_upload"):
            panel[name].upload(self.check_upload, inputs=panel[name], outputs=panel[name], preprocess=False,
                               **hidden)

    def _panel_outputs(self, parts: dict[str, Any]) -> list[Any]:
        """The panel's components a restored task updates, in :data:`PANEL_RESTORED` order."""
        return [self._input[key] if key in self._input else parts[key] for key in PANEL_RESTORED]

    def _panel_updates(self, task: GenerationTask) -> list[Any]:
        """Updates showing ``task`` in the Input Image panel (:data:`PANEL_RESTORED` order); an image the input
        store no longer holds is left as it is, with a warning to upload it again."""
        state = panel_from_task(task, self.engine.inputs if task.input_image is not None else None)
        for warning in state.warnings:
            gr.Warning(warning)
        values = state.values
        layout = method_layout(values["inpaint_method"])
        special = {
            "input_tabs": gr.Tabs(selected=values["input_tab"]),
            "uov_image": values.get("uov_image", gr.skip()),
            "inpaint_editor": values.get("inpaint_editor", gr.skip()),
            "inpaint_prompt": gr.update(visible=layout.prompt_box, value=values["inpaint_prompt"]),
            "quick_list": gr.Dataset(visible=layout.quick_list),
            "outpaint": gr.update(visible=layout.outpaint, value=values["outpaint"]),
        }
        return [special[key] if key in special else values[key] for key in PANEL_RESTORED]

    def _method_outputs(self, parts: dict[str, Any]) -> list[Any]:
        panel = self._input
        return [panel["inpaint_prompt"], parts["quick_list"], panel["outpaint"],
                *[panel[name] for name in ADVANCED_FIELDS]]

    def change_inpaint_method(self, method: str) -> list[Any]:
        """The user chose an inpaint method: show its controls and reset engine, strength and respective field to
        its defaults (as Fooocus does); the prompt box empties when hidden, the outpaint directions likewise."""
        return self._method_updates(method, reset=True)

    @staticmethod
    def _method_updates(method: str, *, reset: bool) -> list[Any]:
        layout = method_layout(method)
        defaults = [layout.engine, layout.strength, layout.respective_field] if reset else [gr.skip()] * 3
        prompt = gr.update(visible=True) if layout.prompt_box else gr.update(visible=False, value="")
        outpaint = gr.update(visible=True) if layout.outpaint else gr.update(visible=False, value=[])
        return [prompt, gr.Dataset(visible=layout.quick_list), outpaint, *defaults]

    def check_upload(self, payload: Mapping[str, Any] | None) -> Any:
        """An image dropped on the panel (raw upload, not yet decoded): one warning and the upload removed when it
        is not an image Foci reads or is too large, so Generate never sees it."""
        path = payload.get("path") if isinstance(payload, Mapping) else None
        if not path:
            return gr.skip()
        try:
            size = Path(path).stat().st_size
            if size > MAX_INPUT_BYTES:
                raise ImageInputError(f"the uploaded file is {size / 2**20:.1f} MiB; Foci accepts image files of "
                                      f"at most {MAX_INPUT_BYTES // 2**20} MiB")
            check_image_bytes(Path(path).read_bytes(), what="the uploaded file")
        except (ImageInputError, OSError) as error:
            gr.Warning(str(error))
            return None
        return gr.skip()

"""The offline API reference page at ``/docs`` and the OpenAPI parts FastAPI cannot infer (hand-read bodies)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel

from foci.service.admission import INPUT_IMAGE_FIELDS

# The API reference at /docs, rendered in the browser from /openapi.json with no external scripts or fonts
# (FastAPI's Swagger UI loads from a CDN, which an offline machine cannot reach).
DOCS_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Foci API</title>
<style>
body{font:15px/1.45 system-ui,sans-serif;margin:0 auto;max-width:980px;padding:1em 1.5em;color:#222}
h1{margin-bottom:.2em} .op{border:1px solid #ddd;border-radius:6px;margin:.6em 0;padding:.5em .8em}
.m{display:inline-block;min-width:4.2em;font-weight:700;text-transform:uppercase;font-size:.85em}
.get{color:#0a7} .post{color:#06c} .patch{color:#a60} .delete{color:#c22} code{background:#f4f4f4;padding:0 .25em}
table{border-collapse:collapse;margin:.3em 0} td,th{border-bottom:1px solid #eee;padding:.15em .6em;text-align:left;
vertical-align:top} .muted{color:#777} details{margin:.3em 0}
</style></head><body><h1>Foci API</h1><p id="intro" class="muted">Loading /openapi.json …</p><div id="ops"></div>
<h2>Schemas</h2><div id="schemas"></div>
<script>
const el = (tag, text, cls) => { const e = document.createElement(tag); if (text !== undefined) e.textContent = text;
  if (cls) e.className = cls; return e; };
const typeOf = s => !s ? "" : s.$ref ? s.$ref.split("/").pop() : s.anyOf ? s.anyOf.map(typeOf).join(" | ")
  : s.type === "array" ? typeOf(s.items) + "[]" : s.enum ? s.enum.map(v => JSON.stringify(v)).join(" | ")
  : (s.type || "object");
function table(rows, head) { const t = el("table"); const h = el("tr");
  head.forEach(x => h.appendChild(el("th", x))); t.appendChild(h);
  rows.forEach(r => { const tr = el("tr"); r.forEach(x => tr.appendChild(el("td", x))); t.appendChild(tr); });
  return t; }
fetch("openapi.json").then(r => r.json()).then(api => {
  document.getElementById("intro").textContent = (api.info.description || "") + " Version " + api.info.version
    + ". Machine-readable schema: /openapi.json.";
  const ops = document.getElementById("ops");
  for (const [path, methods] of Object.entries(api.paths)) {
    for (const [method, op] of Object.entries(methods)) {
      const box = el("div", undefined, "op"); const line = el("div");
      line.appendChild(el("span", method, "m " + method)); line.appendChild(el("code", path));
      line.appendChild(el("span", "  " + (op.summary || ""))); box.appendChild(line);
      if (op.parameters && op.parameters.length) box.appendChild(table(op.parameters.map(p =>
        [p.name, p.in, typeOf(p.schema), p.required ? "required" : "", p.description || ""]),
        ["parameter", "in", "type", "", ""]));
      if (op.requestBody) box.appendChild(el("div", "body: " + Object.entries(op.requestBody.content).map(
        ([mime, c]) => mime + " " + typeOf(c.schema)).join(", "), "muted"));
      box.appendChild(el("div", "responses: " + Object.entries(op.responses).map(([code, r]) =>
        code + " " + (r.description || "")).join(" · "), "muted"));
      ops.appendChild(box);
    }
  }
  const schemas = document.getElementById("schemas");
  for (const [name, schema] of Object.entries((api.components || {}).schemas || {})) {
    const d = el("details"); d.appendChild(el("summary", name + (schema.description ? " — " + schema.description
      : ""))); const req = new Set(schema.required || []);
    d.appendChild(table(Object.entries(schema.properties || {}).map(([k, v]) =>
      [k, typeOf(v), req.has(k) ? "required" : "", v.description || ""]), ["field", "type", "", ""]));
    schemas.appendChild(d);
  }
}).catch(e => { document.getElementById("intro").textContent = "Could not load /openapi.json: " + e; });
</script></body></html>
"""


def _job_body_docs(model: type[BaseModel], what: str) -> dict[str, Any]:
    """OpenAPI request body of a job route: the model as JSON, or multipart with the JSON and the image files."""
    image_parts = {name: {"type": "string", "format": "binary", "description": f"the {name.replace('_', ' ')} "
                          "file (sets task." + name + ")"} for name in INPUT_IMAGE_FIELDS}
    return {"requestBody": {"required": True, "content": {
        "application/json": {"schema": {"$ref": f"#/components/schemas/{model.__name__}"}},
        "multipart/form-data": {"schema": {"type": "object", "properties": {
            "job": {"type": "string", "description": f"{what} as JSON ({model.__name__})"}, **image_parts}}}}}}


def _with_schemas(app: FastAPI, models: Sequence[type[BaseModel]]) -> None:
    """Add ``models`` (read by hand from the request, so FastAPI does not see them) to the OpenAPI components."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, description=app.description,
                                 routes=app.routes)
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            for model in models:
                model_schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
                for name, definition in model_schema.pop("$defs", {}).items():
                    components.setdefault(name, definition)
                components[model.__name__] = model_schema
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]  # FastAPI's documented way to extend the schema


_UPLOAD_BODY = {"requestBody": {"required": True, "content": {
    "multipart/form-data": {"schema": {"type": "object", "required": ["file"], "properties": {
        "file": {"type": "string", "format": "binary"}}}},
    "image/*": {"schema": {"type": "string", "format": "binary"}}}}}

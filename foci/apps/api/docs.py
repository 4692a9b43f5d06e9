"""The offline API reference page at ``/docs`` and the OpenAPI parts FastAPI cannot infer (hand-read bodies)."""

from __future__ import annotations

import re
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
vertical-align:top} .muted{color:#777} details{margin:.3em 0} .desc{white-space:pre-wrap;margin:.2em 0}
.try label{margin-right:.8em} .try textarea{width:100%;font:13px monospace} .out{background:#f7f7f7;max-height:16em;
overflow:auto;white-space:pre-wrap}
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
const schemaOf = (api, s) => s && s.$ref ? api.components.schemas[s.$ref.split("/").pop()] : s;
function fieldTable(api, schema) { const req = new Set(schema.required || []);
  return table(Object.entries(schema.properties || {}).map(([k, v]) => {
    const bounds = [v.minimum !== undefined ? "≥ " + v.minimum : "", v.maximum !== undefined ? "≤ " + v.maximum : ""]
      .filter(Boolean).join(", ");
    const dflt = v.default !== undefined ? "default " + JSON.stringify(v.default) : "";
    return [k, typeOf(v), req.has(k) ? "required" : "", [v.description || "", bounds, dflt].filter(Boolean)
      .join("; ")]; }), ["field", "type", "", ""]); }
function tryIt(path, method, op) {
  const d = el("details", undefined, "try"); d.appendChild(el("summary", "Try it"));
  const params = (op.parameters || []).filter(p => p.in === "path" || p.in === "query");
  const inputs = params.map(p => { const label = el("label", p.name + " "); const input = el("input");
    input.name = p.name; label.appendChild(input); d.appendChild(label); return [p, input]; });
  let body = null;
  if (op.requestBody && op.requestBody.content["application/json"]) {
    body = el("textarea"); body.rows = 5; body.value = path === "/v1/jobs" ? '{"task": {"prompt": "a cat"}}' : "{}";
    d.appendChild(body);
  }
  const send = el("button", "Send " + method.toUpperCase()); const out = el("pre", "", "out");
  send.onclick = async () => {
    let url = path; const query = new URLSearchParams();
    for (const [p, input] of inputs) { if (p.in === "path") url = url.replace("{" + p.name + "}",
      encodeURIComponent(input.value)); else if (input.value) query.set(p.name, input.value); }
    if ([...query].length) url += "?" + query;
    const init = {method: method.toUpperCase()};
    if (body) { init.body = body.value; init.headers = {"Content-Type": "application/json"}; }
    try { const r = await fetch(url.replace(/^\\//, "") || ".", init); const t = await r.text();
      out.textContent = r.status + " " + r.statusText + "\\n" + t.slice(0, 4000); }
    catch (e) { out.textContent = String(e); }
  };
  d.appendChild(send); d.appendChild(out); return d; }
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
      if (op.description) box.appendChild(el("div", op.description, "desc"));
      if (op.requestBody) {
        box.appendChild(el("div", "body: " + Object.entries(op.requestBody.content).map(
          ([mime, c]) => mime + " " + typeOf(c.schema)).join(", "), "muted"));
        const json = op.requestBody.content["application/json"];
        const fields = json && json.schema && schemaOf(api, json.schema);
        if (fields && fields.properties) {
          const d = el("details"); d.appendChild(el("summary", "request fields"));
          d.appendChild(fieldTable(api, fields)); box.appendChild(d);
        }
      }
      box.appendChild(el("div", "responses: " + Object.entries(op.responses).map(([code, r]) => {
        const c = r.content && r.content["application/json"];
        return code + " " + (r.description || "") + (c && c.schema ? " (" + typeOf(c.schema) + ")" : "");
      }).join(" · "), "muted"));
      box.appendChild(tryIt(path, method, op));
      ops.appendChild(box);
    }
  }
  const schemas = document.getElementById("schemas");
  for (const [name, schema] of Object.entries((api.components || {}).schemas || {})) {
    const d = el("details"); d.appendChild(el("summary", name + (schema.description ? " — " + schema.description
      : ""))); d.appendChild(fieldTable(api, schema));
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


_SPEC_REFERENCE = re.compile(r"\s*\(§[\d.]+(?:[,;][^)]*)?\)")
_SPHINX_ROLE = re.compile(r":(?:class|func|meth|mod|attr|data|exc):`~?([\w.]+)`")
_DOUBLE_BACKTICKS = re.compile(r"``([^`]+)``")


def reader_text(text: str) -> str:
    """A docstring made for readers of the API: no spec section numbers, no Sphinx roles or double backticks."""
    text = _SPEC_REFERENCE.sub("", text)
    text = _SPHINX_ROLE.sub(lambda match: match.group(1).rsplit(".", 1)[-1], text)
    return _DOUBLE_BACKTICKS.sub(r"`\1`", text)


def _clean(node: Any) -> Any:
    """``node`` (an OpenAPI document) with :func:`reader_text` applied to every description and summary."""
    if isinstance(node, dict):
        return {key: reader_text(value) if key in ("description", "summary") and isinstance(value, str)
                else _clean(value) for key, value in node.items()}
    if isinstance(node, list):
        return [_clean(item) for item in node]
    return node


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
            app.openapi_schema = _clean(schema)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]  # FastAPI's documented way to extend the schema


_UPLOAD_BODY = {"requestBody": {"required": True, "content": {
    "multipart/form-data": {"schema": {"type": "object", "required": ["file"], "properties": {
        "file": {"type": "string", "format": "binary"}}}},
    "image/*": {"schema": {"type": "string", "format": "binary"}}}}}

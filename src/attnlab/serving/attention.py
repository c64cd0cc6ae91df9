"""The attention viewer's page for the loaded model (inference/attention_view.py):

    GET  /attention                   a form for one input of the kind the model reads
    GET  /attention?text=...          causal LMs, encoders (also text_pair=...) and dual encoders
    GET  /attention?source=...&target=...   seq2seq models
    POST /attention {"input": base64} image, audio and video classifiers, and a dual encoder's image
                                      tower: one file
-> the self-contained HTML page. An input the model cannot take, or a family without attention
weights, is a 400 in the server's one error shape.
"""

import html

from fastapi import FastAPI
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse
from pydantic import BaseModel, ConfigDict, Field

from ..inference.attention_maps import refuse_without_weights
from ..inference.attention_view import render_html, view_attention
from ..models.base import CLASSIFIER, DUAL_ENCODER, ENCODER, SEQ2SEQ, family_spec

# The form's fields for each kind (name, label); a classifier's file is posted, not typed.
FIELDS = {SEQ2SEQ: (("source", "source"), ("target", "target (the decoder's input)")),
          ENCODER: (("text", "text"), ("text_pair", "second sentence (optional)"))}


class AttentionFileRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    input: str = Field(min_length=1, description="one base64-encoded file of the classifier's modality")


def add_attention_routes(app: FastAPI, model, processor, file_bytes, responses: dict):
    """Registers /attention on `app`; `file_bytes(index, text)` decodes a posted base64 file within the
    server's byte limit."""
    spec = family_spec(model)
    title = f"{spec.name} (served)"

    async def page(**inputs) -> HTMLResponse:
        view = await run_in_threadpool(lambda: view_attention(model, processor, title=title, **inputs))
        return HTMLResponse(await run_in_threadpool(render_html, view))

    @app.get("/attention", response_class=HTMLResponse, responses=responses)
    async def attention_get(text: str = None, text_pair: str = None, source: str = None, target: str = None):
        if text is None and source is None and target is None:
            refuse_without_weights(model)
            return HTMLResponse(_form(spec))
        return await page(text=text, text_pair=text_pair, source=source, target=target)

    @app.post("/attention", response_class=HTMLResponse, responses=responses)
    async def attention_post(body: AttentionFileRequest):
        if spec.kind not in (CLASSIFIER, DUAL_ENCODER):
            return await page(media=None)  # refused in one line: this model reads text
        return await page(media=processor.decode(file_bytes(0, body.input), "input"))


def _form(spec) -> str:
    if spec.kind == CLASSIFIER:
        body = (f"<p>POST /attention with JSON {{\"input\": base64 of one {spec.modality} file}} to get the "
                "attention page of this classifier.</p>")
    else:
        fields = FIELDS.get(spec.kind, (("text", "text"),))
        body = "<form method='get'>" + "".join(
            f"<p><label>{label}<br><textarea name='{name}' rows='3' cols='80'></textarea></label></p>"
            for name, label in fields) + "<button>show attention</button></form>"
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>attention: {html.escape(spec.name)}</title>"
            f"</head><body><h1>Attention of the served {html.escape(spec.name)} model</h1>{body}</body></html>")

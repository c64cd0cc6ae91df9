"""POST /v1/classify for a graph network: a posted graph in, each node's label and score out.

    {"x": [[features of node 0], ...], "edge_index": [[sources...], [targets...]]}
    -> {"object": "list", "data": [{"node": i, "label", "score", "scores": {label: probability}}]}

413 past the server's node or edge limit (`ServeConfig.max_nodes`, `max_edges`, and the model's own
max_nodes); 400 for a malformed graph (wrong feature width, an edge naming a missing node, a
non-integer edge, rows of different lengths), each in one line.
"""

import functools
from typing import Annotated

from fastapi import FastAPI, Request
from pydantic import BaseModel, ConfigDict, Field

from ..errors import UserError
from ..evaluation.graph import label_names, node_probabilities
from ..processors.graph import GraphTooLarge
from .errors import ApiError


class GraphRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    x: Annotated[list[list[float]], Field(min_length=1)] = Field(description="node features, one row per node (N, F)")
    edge_index: list[list[float]] = Field(description="two rows: the source and the target node of each edge (2, E); "
                                                      "integers")
    model: str | None = None


def add_graph_routes(app: FastAPI, model, processor, config, worker, responses: dict):
    """Registers /v1/classify for a graph network on `app` (before any other route of that path)."""
    max_nodes = min(config.max_nodes, model.config.max_nodes)

    @app.post("/v1/classify", responses=responses)
    async def classify_graph(body: GraphRequest, request: Request):
        try:
            batch = processor.to_batch(body.x, body.edge_index, max_nodes=max_nodes, max_edges=config.max_edges,
                                       what="the posted graph")
        except GraphTooLarge as err:
            raise ApiError(413, str(err)) from None
        except UserError as err:
            raise ApiError(400, str(err)) from None
        predict = functools.partial(_probabilities, model)
        probabilities = await worker.run(predict, [batch], request)
        names = label_names(model.config)
        data = []
        for node, probs in enumerate(probabilities):
            best = max(range(len(probs)), key=probs.__getitem__)
            data.append({"node": node, "label": names[best], "score": probs[best], "scores": dict(zip(names, probs))})
        return {"object": "list", "model": config.model_name, "data": data}


def _probabilities(model, batch) -> list:
    return node_probabilities(model, batch).tolist()

"""POST /v1/classify for a graph network: a posted graph in, each node's label out; or, for a graph
classifier, a posted list of graphs in, one label per graph out.

    graph:            {"x": [[features of node 0], ...], "edge_index": [[sources...], [targets...]]}
                      -> {"object": "list", "data": [{"node": i, "label", "score", "scores": {label: p}}]}
    graph_classifier: {"graphs": [{"x": ..., "edge_index": ...}, ...]}
                      -> {"object": "list", "data": [{"index": g, "label", "score", "scores": {label: p}}]}

413 past the server's node or edge limit (`ServeConfig.max_nodes`, `max_edges`: per request, all
graphs together; the model's own max_nodes: per graph) or more graphs than `max_inputs`; 400 for
a malformed graph (wrong feature width, an edge naming a missing node, a non-integer edge, rows of
different lengths), each in one line naming the graph.
"""

import functools
from typing import Annotated

from fastapi import FastAPI, Request
from pydantic import BaseModel, ConfigDict, Field

from ..errors import UserError
from ..evaluation.graph import graph_probabilities, label_names, node_probabilities
from ..processors.graph import GraphTooLarge
from .errors import ApiError


class GraphRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    x: Annotated[list[list[float]], Field(min_length=1)] = Field(description="node features, one row per node (N, F)")
    edge_index: list[list[float]] = Field(description="two rows: the source and the target node of each edge (2, E); "
                                                      "integers")
    model: str | None = None


class Graph(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    x: Annotated[list[list[float]], Field(min_length=1)] = Field(description="node features, one row per node (N, F)")
    edge_index: list[list[float]] = Field(description="two rows: sources and targets (2, E), numbering this graph's "
                                                      "nodes from 0")


class GraphsRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    graphs: Annotated[list[Graph], Field(min_length=1)] = Field(description="the graphs to label, one label each")
    model: str | None = None


def add_graph_routes(app: FastAPI, model, processor, config, worker, responses: dict):
    """Registers /v1/classify for a graph network on `app` (before any other route of that path)."""
    if model.config.per_graph:
        return _add_graph_set_route(app, model, processor, config, worker, responses)
    max_nodes = min(config.max_nodes, model.config.max_nodes)

    @app.post("/v1/classify", responses=responses)
    async def classify_graph(body: GraphRequest, request: Request):
        batch = _checked(processor, body, "the posted graph", max_nodes, config.max_edges)
        predict = functools.partial(_node_probabilities, model)
        probabilities = await worker.run(predict, [batch], request)
        return _reply(config, model, probabilities, "node")


def _add_graph_set_route(app: FastAPI, model, processor, config, worker, responses: dict):
    @app.post("/v1/classify", responses=responses)
    async def classify_graphs(body: GraphsRequest, request: Request):
        if len(body.graphs) > config.max_inputs:
            raise ApiError(413, f"the request holds {len(body.graphs)} graphs, more than the limit of "
                                f"{config.max_inputs}; split the request")
        nodes, edges = sum(len(g.x) for g in body.graphs), sum(len(g.edge_index[0]) for g in body.graphs
                                                              if g.edge_index)
        if nodes > config.max_nodes or edges > config.max_edges:
            raise ApiError(413, f"the request's graphs hold {nodes} nodes and {edges} edges together, more than the "
                                f"limits of {config.max_nodes} and {config.max_edges}; split the request")
        graphs = [_checked(processor, graph, f"graph {i}", model.config.max_nodes, None)
                  for i, graph in enumerate(body.graphs)]
        predict = functools.partial(_graph_probabilities, model)
        probabilities = await worker.run(predict, [graphs], request)
        return _reply(config, model, probabilities, "index")


def _checked(processor, graph, what: str, max_nodes: int, max_edges) -> dict:
    """A posted graph -> its batch; a graph over a limit is a 413, a malformed one a 400."""
    try:
        return processor.to_batch(graph.x, graph.edge_index, max_nodes=max_nodes, max_edges=max_edges, what=what)
    except GraphTooLarge as err:
        raise ApiError(413, str(err)) from None
    except UserError as err:
        raise ApiError(400, str(err)) from None


def _reply(config, model, probabilities: list, key: str) -> dict:
    names = label_names(model.config)
    data = []
    for i, probs in enumerate(probabilities):
        best = max(range(len(probs)), key=probs.__getitem__)
        data.append({key: i, "label": names[best], "score": probs[best], "scores": dict(zip(names, probs))})
    return {"object": "list", "model": config.model_name, "data": data}


def _node_probabilities(model, batch) -> list:
    return node_probabilities(model, batch).tolist()


def _graph_probabilities(model, graphs) -> list:
    return graph_probabilities(model, graphs).tolist()

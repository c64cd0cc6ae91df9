"""A compression pipeline: stages like "distill:3,prune:0.4,quantize:dynamic_int8" applied in
order to a fine-tuned classifier, each one fine-tuned (where it trains) on the task data.

    distill:N       a student with N of the teacher's layers, trained on labels + the teacher's
                    softened logits
    prune:A         remove the fraction A of attention heads and FFN neurons (Taylor
                    importance on a few training batches), then a short fine-tune
    quantize:S      quantise the block projections with scheme S (dynamic_int8, int8, int4,
                    static_int8 calibrated on training batches)
"""

import dataclasses
import itertools

from ..errors import UserError
from ..training.finetune import fit
from .distill import Distiller, make_student
from .prune import prune_structured
from .quantize import SCHEMES, quantize_model

STAGES = ("distill", "prune", "quantize")


def parse_pipeline(text: str) -> list:
    """"distill:3,prune:0.4,quantize" -> [("distill", 3), ("prune", 0.4), ("quantize", "dynamic_int8")]."""
    stages = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, _, arg = item.partition(":")
        if name not in STAGES:
            raise UserError(f"unknown pipeline stage {name!r}; stages are {', '.join(STAGES)} "
                            "(e.g. distill:3,prune:0.4,quantize:dynamic_int8)")
        try:
            value = {"distill": lambda a: int(a or 3), "prune": lambda a: float(a or 0.4),
                     "quantize": lambda a: a or "dynamic_int8"}[name](arg)
        except ValueError:
            raise UserError(f"pipeline stage {item!r}: {arg!r} is not a valid setting") from None
        if name == "quantize" and (value not in SCHEMES or value == "qat"):
            raise UserError(f"pipeline stage {item!r}: unknown quantisation scheme {value!r}")
        stages.append((name, value))
    if not stages:
        raise UserError("the pipeline is empty; e.g. --pipeline distill:3,prune:0.4,quantize:dynamic_int8")
    if "quantize" in [name for name, _ in stages[:-1]]:
        raise UserError("quantize must be the last stage: a quantised model is not trained further")
    return stages


def run_stage(model, stage, train, val, names, config, log=None, temperature=2.0, alpha=0.5, prune_epochs=1):
    """Apply one stage to `model` -> (new model, details dict)."""
    name, value = stage
    if name == "distill":
        student = make_student(model, value)
        result = fit(student, train, val, names, config,
                     loss_fn=Distiller(model, student, temperature=temperature, alpha=alpha),
                     log=log)
        return student, {"layers": value, "train_seconds": result["seconds"]}
    if name == "prune":
        batches = list(itertools.islice(train.shuffled_batches(config.batch_size, seed=config.seed + 99), 8))
        report = prune_structured(model, value, importance="taylor", batches=batches)
        result = fit(model, train, val, names, dataclasses.replace(config, epochs=prune_epochs), log=log)
        return model, {**report, "train_seconds": result["seconds"]}
    calibration = None
    if value == "static_int8":
        calibration = [{k: v for k, v in b.items() if k != "labels"}
                       for b in itertools.islice(train.shuffled_batches(config.batch_size, seed=config.seed), 8)]
    return quantize_model(model, value, calibration=calibration), {"scheme": value}

"""Data-parallel training across processes (torchrun, one machine or several).

`torchrun --nproc_per_node N -m attnlab.cli train ...` starts N processes with RANK,
WORLD_SIZE, LOCAL_RANK and a rendezvous address in their environment; `from_env` turns that
into a process group (NCCL on GPUs, gloo on CPU) and returns a `DataParallel` that the trainer
consults at a few points:

- every rank draws the same *global* batch from the shared data generator and keeps its own
  slice of the rows (`RankBatches`), so N ranks with batch_size B see exactly the blocks that one
  process with batch_size N*B sees, in the same order, and resume restores the order exactly;
- DDP all-reduces (averages) gradients on the last micro-step of an accumulation window only;
  `no_sync` skips the all-reduce on the others. FSDP shards parameters, gradients and optimiser
  state over the ranks instead, for models that do not fit on one device;
- rank 0 alone writes logs and checkpoints; checkpoints hold full (unsharded) weights, so a run
  can resume with any number of processes, or with one.

Without torchrun nothing changes: `SingleProcess` answers every hook with a no-op.

The FSDP and distributed-checkpoint modules are imported where used: they take seconds to
import, which every single-process run would otherwise pay.
"""

import contextlib
import os

import torch
import torch.distributed as dist
from safetensors.torch import load_file
from torch import nn

from ..checkpoint import check_weights, load_weights
from ..errors import UserError
from ..models.base import build_model

STRATEGIES = ("ddp", "fsdp")


class SingleProcess:
    rank, world_size, device = 0, 1, None
    is_main = True

    def wrap(self, model, block_class):
        return model

    def shard(self, batches):
        return batches

    def no_sync(self, model, last_micro_step: bool):
        return contextlib.nullcontext()

    def mean(self, value: float) -> float:
        return value

    def main_first(self):
        return contextlib.nullcontext()

    def full_model(self, model) -> nn.Module:
        """A module holding the full weights, for saving (the model itself here)."""
        return model

    def load_weights(self, model, path):
        load_weights(model, path)

    def optimizer_state(self, model, optimizer) -> dict:
        return optimizer.state_dict()

    def load_optimizer_state(self, model, optimizer, state: dict):
        optimizer.load_state_dict(state)

    def close(self):
        pass


class RankBatches:
    """This rank's rows of the global batch. `source` is any batch source with a `batch_size`
    (rows per sample) and `sample(split, generator) -> Batch`; its batch_size becomes the global one.
    A batch of graphs (data/graph.py GraphBatch) splits into whole graphs; a source without a
    batch_size (one whole graph, node classification) cannot be split and is refused."""

    def __init__(self, source, rank: int, world_size: int):
        if not hasattr(source, "batch_size"):
            raise UserError("this task trains on one whole batch (e.g. node classification on one graph), which "
                            "cannot be split across data-parallel ranks; train it in a single process")
        self.source, self.rank, self.world_size = source, rank, world_size
        self.local_size = source.batch_size
        source.batch_size = self.local_size * world_size

    def sample(self, split, generator):
        start = self.rank * self.local_size
        return self.source.sample(split, generator).rows(start, start + self.local_size)


class DataParallel(SingleProcess):
    def __init__(self, strategy: str, device: torch.device):
        self.strategy, self.device = strategy, device
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
        self.is_main = self.rank == 0

    def wrap(self, model, block_class):
        """DDP: a wrapper to call for forward passes. FSDP: shards `model` in place (each module of
        `block_class`, the family's repeated block, is one unit, the rest the root unit; None: the
        whole model is one unit) and returns it."""
        if self.strategy == "ddp":
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            return nn.parallel.DistributedDataParallel(model, device_ids=device_ids)
        from torch.distributed.fsdp import fully_shard
        for module in model.modules():
            if block_class is not None and isinstance(module, block_class):
                fully_shard(module)
        return fully_shard(model)

    def shard(self, batches):
        return RankBatches(batches, self.rank, self.world_size)

    def no_sync(self, model, last_micro_step):
        if last_micro_step:
            return contextlib.nullcontext()
        if self.strategy == "ddp":
            return model.no_sync()
        return _fsdp_no_sync(model)

    def mean(self, value):
        tensor = torch.tensor(float(value), dtype=torch.float64, device=self._comm_device())
        dist.all_reduce(tensor)
        return tensor.item() / self.world_size

    @contextlib.contextmanager
    def main_first(self):
        """Rank 0 runs the block first (e.g. writes a data cache), the others after it; a user
        error on rank 0 stops every rank (with exit 2, and only rank 0 prints it)."""
        if not self.is_main:
            if not self._main_succeeded(True):
                raise UserError("rank 0 stopped with an error")
            yield
            return
        try:
            yield
        except UserError:
            self._main_succeeded(False)
            raise
        self._main_succeeded(True)

    def _main_succeeded(self, ok: bool) -> bool:
        """Rank 0 sends whether its block succeeded; every rank returns that."""
        flag = torch.tensor([int(ok)], device=self._comm_device())
        dist.broadcast(flag, src=0)
        return bool(flag.item())

    # -- full state for checkpoints (collective calls: every rank takes part) --------------------
    def full_model(self, model):
        """DDP: the model. FSDP: on rank 0 an unsharded CPU copy, None elsewhere."""
        if self.strategy == "ddp":
            return model
        from torch.distributed.checkpoint.state_dict import get_model_state_dict
        weights = get_model_state_dict(model, options=_full_state_options())
        if not self.is_main:
            return None
        full = build_model(model.config)
        full.load_state_dict(weights)
        return full

    def load_weights(self, model, path):
        if self.strategy == "ddp":
            return load_weights(model, path)
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict
        weights = load_file(path)
        check_weights(model, weights, source=str(path))
        # strict=False: a tied tensor is saved once, and loading it fills every name it has
        set_model_state_dict(model, weights, options=StateDictOptions(full_state_dict=True, strict=False))

    def optimizer_state(self, model, optimizer):
        if self.strategy == "ddp":
            return optimizer.state_dict()
        from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict
        return get_optimizer_state_dict(model, optimizer, options=_full_state_options())

    def load_optimizer_state(self, model, optimizer, state):
        if self.strategy == "ddp":
            return optimizer.load_state_dict(state)
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict
        set_optimizer_state_dict(model, optimizer, state, options=StateDictOptions(full_state_dict=True))

    def close(self):
        if dist.is_initialized():
            dist.barrier()  # no rank tears its group down while another still talks to it
            dist.destroy_process_group()

    def _comm_device(self):
        return self.device if dist.get_backend() == "nccl" else torch.device("cpu")


def _full_state_options():
    from torch.distributed.checkpoint.state_dict import StateDictOptions
    return StateDictOptions(full_state_dict=True, cpu_offload=True)


@contextlib.contextmanager
def _fsdp_no_sync(model):
    model.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        model.set_requires_gradient_sync(True)


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def from_env(strategy: str = "ddp", device: str = "auto"):
    """A DataParallel when started by torchrun with more than one process, else SingleProcess."""
    if not launched_by_torchrun():
        return SingleProcess()
    if strategy not in STRATEGIES:
        raise UserError(f"train.distributed={strategy!r} is not one of {', '.join(STRATEGIES)}")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and device in ("auto", "cuda")
    if use_cuda:
        torch.cuda.set_device(local_rank)
    dist.init_process_group("nccl" if use_cuda else "gloo")
    return DataParallel(strategy, torch.device("cuda", local_rank) if use_cuda else torch.device("cpu"))

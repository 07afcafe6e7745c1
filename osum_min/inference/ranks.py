"""Many processes under torchrun (one node or many), for inference and training.

Inference: each rank decodes a length-balanced share of the files, and rank 0 gathers every result, so that it
reports them exactly as one process would. Only file indices, token ids and error lines cross between ranks, as JSON
over gloo (CPU), whatever device decodes. Training: gradients and the step's sums cross on the device (NCCL on CUDA).
"""

import json
import os
from dataclasses import asdict

import torch
import torch.distributed as dist

from .pipeline import RequestError
from .windows import Decoded


def world() -> tuple[int, int, int]:
    """(rank, world size, local rank) as torchrun sets them; (0, 1, 0) in a plain process."""
    return (
        int(os.environ.get("RANK", 0)),
        int(os.environ.get("WORLD_SIZE", 1)),
        int(os.environ.get("LOCAL_RANK", 0)),
    )


def start(device: str | None) -> str | None:
    """Join torchrun's process group (gloo) and return this rank's device: its own GPU by LOCAL_RANK on CUDA."""
    _, size, local_rank = world()
    if size > 1 and not dist.is_initialized():
        dist.init_process_group("gloo")
    on_cuda = device is None and torch.cuda.is_available() or device == "cuda"
    if size > 1 and on_cuda:
        torch.cuda.set_device(local_rank % torch.cuda.device_count())
        return f"cuda:{local_rank % torch.cuda.device_count()}"
    return device


def start_training(device: str) -> tuple[int, int, torch.device]:
    """Join torchrun's process group for training and return (rank, world size, this rank's device): on CUDA each
    rank takes its GPU by LOCAL_RANK and the collectives run there (NCCL), on CPU over gloo."""
    rank, size, local_rank = world()
    device = torch.device(device)
    if size == 1:
        return 0, 1, device
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return rank, size, device


def balanced_share(seconds: list[float], rank: int, size: int) -> list[int]:
    """The indices of the files this rank decodes: longest first, each to the rank with the least audio so far
    (ties to the lower rank), so ranks finish together."""
    totals, shares = [0.0] * size, [[] for _ in range(size)]
    for index in sorted(range(len(seconds)), key=lambda i: (-seconds[i], i)):
        least = min(range(size), key=lambda r: (totals[r], r))
        totals[least] += max(seconds[index], 0.0)
        shares[least].append(index)
    return sorted(shares[rank])


def gather_outcomes(outcomes: list[tuple[int, Decoded | RequestError]]):
    """Every rank's (index, Decoded or RequestError) pairs at rank 0, in rank order (an empty list elsewhere)."""
    rank, size, _ = world()
    mine = json.dumps(
        [
            [
                index,
                {"name": o.name, "problem": o.problem, "kind": o.kind}
                if isinstance(o, RequestError)
                else asdict(o),
            ]
            for index, o in outcomes
        ]
    )
    gathered = [None] * size if rank == 0 else None
    dist.gather_object(mine, gathered, dst=0)
    if rank != 0:
        return []
    return [
        (index, RequestError(**fields) if "problem" in fields else Decoded(**fields))
        for text in gathered
        for index, fields in json.loads(text)
    ]


def finish():
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()

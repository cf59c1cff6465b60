"""Starting a tensor-parallel group of N ranks and loading each rank's shard (docs/tensor-parallel.md).

Two ways in, one result (`start`):
- under torchrun (WORLD_SIZE in the environment, one process per rank, on one machine or many): every rank
  runs the same command; rank 0 returns its `TensorParallelModel` and goes on with the command (generate,
  serve...); the other ranks load their shard, follow rank 0's forwards and exit when it closes, so the
  command itself never runs on them;
- standalone: this process is rank 0 and starts the N - 1 others with torch's multiprocessing (spawn),
  on this machine, the group meeting on a free local port.
Backend: NCCL on CUDA (rank r on GPU `LOCAL_RANK`, standalone GPU r), gloo on the CPU.

A rank that dies must not leave rank 0 waiting: its connections close and rank 0's next collective raises
(`TensorParallelError`); standalone, a monitor thread also watches the other ranks' processes and ends rank
0's process with a clear message as soon as one exits unasked. Under torchrun, its agent stops the others.
An idle group sends a keep-alive message every `KEEP_ALIVE_S` so that its connections stay within the
collectives' timeout.
"""

from __future__ import annotations

import atexit
import datetime
import multiprocessing.connection
import os
import socket
import sys
import threading
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from pixtral.checkpoint.loader import Checkpoint, LoadPlan, load_model, open_checkpoint
from pixtral.engine.compute_thread import in_fresh_thread
from pixtral.errors import ConfigError
from pixtral.model.pixtral import Pixtral
from pixtral.parallel.lockstep import TensorParallelModel, follow
from pixtral.parallel.tensor_parallel import ShardPlan, check_size

TIMEOUT = datetime.timedelta(minutes=30)  # one collective (a long prefill chunk over a slow network)
KEEP_ALIVE_S = 60.0


@dataclass(frozen=True)
class LoadSpec:
    """How every rank loads its shard: the same for all (picklable: it travels to spawned ranks)."""

    path: str
    dtype: str
    device_type: str  # "cpu" | "cuda": rank r runs on cuda:<local rank>
    quantize: str | None = None
    group_size: int = 128
    threads: int | None = None  # CPU threads per rank


def load_shard(spec: LoadSpec, rank: int, size: int) -> tuple[Pixtral, Checkpoint]:
    """Rank `rank`'s shard, reading only its part of the checkpoint (parallel/tensor_parallel.py)."""
    device = torch.device("cuda", _local_rank(rank)) if spec.device_type == "cuda" else torch.device("cpu")
    if spec.quantize:
        from pixtral.engine.quantize import QuantizePlan

        inner: LoadPlan = QuantizePlan(spec.quantize, spec.dtype, spec.group_size, device=device)
    else:
        inner = LoadPlan(spec.dtype, device)
    return load_model(spec.path, plan=ShardPlan(inner, rank, size))


def start(
    spec: LoadSpec, size: int, exit_on_rank_loss: bool = True
) -> tuple[TensorParallelModel, Checkpoint]:
    """Rank 0's model of a group of `size` (see the module docstring). On the other ranks of a torchrun
    group this does not return: they follow, then exit."""
    check_size(open_checkpoint(spec.path).config, size, spec.path)  # before any process starts
    if "WORLD_SIZE" in os.environ:
        world = int(os.environ["WORLD_SIZE"])
        if world != size:
            raise ConfigError(
                f"--tensor-parallel-size {size} but torchrun started {world} processes: they must be equal"
            )
        rank = int(os.environ["RANK"])
        _init(spec, rank, size, "env://")
        if rank != 0:
            _follow_and_exit(spec, rank, size)
        processes = []
    else:
        init = f"tcp://127.0.0.1:{_free_port()}"
        if spec.device_type == "cpu" and spec.threads is None:  # the ranks share this machine's cores
            spec = LoadSpec(**{**spec.__dict__, "threads": max(1, torch.get_num_threads() // size)})
        context = mp.get_context("spawn")
        processes = [
            context.Process(
                target=_spawned_rank, args=(spec, r, size, init), daemon=True, name=f"pixtral-tp{r}"
            )
            for r in range(1, size)
        ]
        for p in processes:
            p.start()
        _init(spec, 0, size, init)
    # loaded in a thread that ends with it, so the thread that runs forwards keeps the only OpenMP team
    shard, ckpt = in_fresh_thread(load_shard, spec, 0, size)
    model = TensorParallelModel(shard, size, on_close=lambda: _close(model, processes))
    atexit.register(model.close)
    threading.Thread(target=_keep_alive, args=(model,), daemon=True, name="pixtral-tp-keepalive").start()
    if processes:
        threading.Thread(
            target=_monitor,
            args=(model, processes, exit_on_rank_loss),
            daemon=True,
            name="pixtral-tp-monitor",
        ).start()
    return model, ckpt


def _init(spec: LoadSpec, rank: int, size: int, init_method: str) -> None:
    if spec.threads:
        torch.set_num_threads(spec.threads)
    if spec.device_type == "cuda":
        torch.cuda.set_device(_local_rank(rank))
    if not dist.is_initialized():
        backend = "nccl" if spec.device_type == "cuda" else "gloo"
        dist.init_process_group(backend, init_method=init_method, rank=rank, world_size=size, timeout=TIMEOUT)


def _local_rank(rank: int) -> int:
    return int(os.environ.get("LOCAL_RANK", rank))


def _follow_and_exit(spec: LoadSpec, rank: int, size: int) -> None:
    shard, _ = load_shard(spec, rank, size)
    follow(shard)
    dist.destroy_process_group()
    sys.stdout.flush()
    os._exit(0)  # not sys.exit: Engine.load may run in a worker thread (eval --in-process)


def _spawned_rank(spec: LoadSpec, rank: int, size: int, init_method: str) -> None:
    try:
        _init(spec, rank, size, init_method)
        _follow_and_exit(spec, rank, size)
    except Exception as e:  # noqa: BLE001 - a follower's end: say why, then rank 0 sees it gone
        print(f"pixtral: tensor-parallel rank {rank}: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
        sys.exit(1)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _monitor(model: TensorParallelModel, processes: list, exit_on_rank_loss: bool) -> None:
    """End rank 0 as soon as another rank's process exits unasked (it held part of every layer)."""
    by_sentinel = {p.sentinel: (rank, p) for rank, p in enumerate(processes, start=1)}
    ready = multiprocessing.connection.wait(list(by_sentinel))
    if model.closed:
        return
    rank, p = by_sentinel[ready[0]]
    p.join(1)
    model.failed = (
        f"tensor-parallel rank {rank} (pid {p.pid}) exited with code {p.exitcode}; every rank holds part "
        "of the model, so this one cannot go on"
    )
    if exit_on_rank_loss:
        # straight to the file descriptor: the main thread may hold sys.stderr's lock (printing the same
        # failure as it surfaces there), and os._exit would drop a message still waiting for it
        os.write(2, f"pixtral: error: {model.failed}\n".encode())
        os._exit(1)


def _keep_alive(model: TensorParallelModel) -> None:
    while not (model.closed or model.failed):
        time.sleep(KEEP_ALIVE_S)
        try:
            model.keep_alive()
        except RuntimeError:
            return


def _close(model: TensorParallelModel, processes: list) -> None:
    """After the stop message: wait for the spawned ranks, end the process group."""
    for p in processes:
        p.join(10)
        if p.is_alive():
            p.terminate()
    if dist.is_initialized():
        dist.destroy_process_group()

"""The config of running past one process: generation engines (vLLM, a generation server) and torchrun/Ray
(`rollout.vllm`, `rollout.server`, `dist`; the rest of the schema is in `schema.py`)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from unipo.config.base import _Strict


class VLLMConfig(_Strict):
    """The vLLM engine's settings (`rollout.engine=vllm`, rollout/vllm.py)."""

    gpu_memory_utilization: float = Field(0.3, gt=0, le=1)
    """The share of the GPU's memory vLLM takes for its weights and KV cache (the trainer needs the rest)."""
    sleep_level: Literal[1, 2] = 1
    """While the trainer updates, vLLM frees its KV cache and 1: moves its weights to CPU memory; 2: discards them
    (the updated ones are loaded before it samples again, so 2 saves the copy)."""
    max_model_len: int | None = Field(None, ge=1)
    """The longest prompt plus completion vLLM reserves cache for; None: the model's."""


class ServerConfig(_Strict):
    """A generation server in its own process (`unipo serve`; `rollout.engine=server`, rollout/server.py)."""

    url: str = "http://127.0.0.1:8765"
    """Where `unipo serve` listens (its own config's value) and where the trainer finds it."""
    timeout_s: float = Field(600.0, gt=0)
    """The longest one request (a generation, a weight transfer) may take before the run fails."""
    wait_s: float = Field(300.0, ge=0)
    """How long the trainer waits for a server that does not answer yet (one starting beside it) before it fails."""
    bucket_mb: float = Field(256.0, gt=0)
    """The weights go in broadcasts of about this many MB (each its tensors' bytes packed together)."""
    weight_host: str | None = None
    """The trainer's address the server connects to for the weights; None: its address on the route to the server."""


class DistConfig(_Strict):
    """Data-parallel training under `torchrun --nproc_per_node N -m unipo train ...` (trainers/dist.py; `strategy` and
    `timeout_s` are ignored in a plain run), and Ray for the reward functions and the engines (`ray`, `ray_engines`)."""

    strategy: Literal["ddp", "fsdp2"] = "ddp"
    """`ddp`: every rank holds the whole model; gradients are summed over the ranks once per optimizer step. `fsdp2`:
    each rank holds a shard of every parameter, gradient and optimizer state (`fully_shard`), gathered layer by layer
    for the update and whole while sampling."""
    ray: bool = False
    """Score rewards in `reward.workers` Ray actors (at least one; `pip install 'unipo[ray]'`), with the isolation of
    worker processes (rewards/ray_actors.py); a local Ray is started for the run unless `ray_address` is set."""
    ray_engines: int = Field(0, ge=0)
    """Sample in this many Ray actors (with `ray`), each holding an engine (`rollout.engine`; one GPU each on a GPU
    machine): the batch's prompts are split across them and each loads the policy's weights after every update
    (rollout/ray_engines.py). 0: the engine runs in the trainer's process."""
    ray_address: str | None = None
    """An existing Ray cluster (`ray.init(address=...)`, e.g. `auto` or `ray://host:10001`); None: a local Ray."""
    timeout_s: int = Field(1800, ge=1)
    """How long a rank waits for the others at a collective (e.g. while rank 0 evaluates) before the run fails."""

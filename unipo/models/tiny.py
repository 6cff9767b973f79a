"""A tiny llama-type causal LM with a BPE tokenizer trained in-process (about a second): for tests and demos.

No hub access: the tokenizer is trained on a small built-in corpus and the weights are random (seeded).
"""

from __future__ import annotations

from pathlib import Path

_CORPUS = [
    "What is 12+7? Reply with only the number. 19",
    "pick say give write number digit now please : 7 77 7",
    "the quick brown fox jumps over the lazy dog 0 1 2 3 4 5 6 7 8 9",
    "user assistant system hello answer question reply only",
]
_CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def build_tiny_model(
    path: str | Path,
    *,
    vocab_size: int = 256,
    hidden: int = 32,
    layers: int = 2,
    seed: int = 0,
    eos_bias: float = 0.0,
    token_biases: dict[str, float] | None = None,
) -> Path:
    """Write a tiny LlamaForCausalLM and its tokenizer to `path` (loadable with `model.path=<path>`).

    `eos_bias` > 0 turns the end-of-turn token's output row towards the mean final hidden state, so that its logit is
    about `eos_bias` on average: a random model that ends its turns within a few tokens (multi-turn tests).
    `token_biases` does the same for the tokens of the given texts (`{"7": 2.0}`: a model that already writes some
    7s, so a reward for them is dense from the first step). The output rows are the input embeddings (tied), so such
    a model also reads those tokens differently: it is not the unbiased model with raised logits, and its log-ratio to
    another model is no reward for the tokens."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    path = Path(path)
    fast = _tokenizer(vocab_size)
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(fast),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        pad_token_id=fast.pad_token_id,
        eos_token_id=fast.eos_token_id,
        bos_token_id=None,
        tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(config)
    biases = {fast.eos_token_id: eos_bias} if eos_bias else {}
    for text, bias in (token_biases or {}).items():
        biases |= dict.fromkeys(fast(text, add_special_tokens=False)["input_ids"], bias)
    if biases:
        with torch.no_grad():
            ids = torch.randint(3, len(fast), (8, 40), generator=torch.Generator().manual_seed(seed))
            mean = model.model(input_ids=ids).last_hidden_state.mean((0, 1))
            for token, bias in biases.items():
                model.lm_head.weight[token] = bias * mean / mean.norm() ** 2
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    fast.save_pretrained(path)
    return path


def build_tiny_reward_model(path: str | Path, *, hidden: int = 16, seed: int = 0, num_labels: int = 1) -> Path:
    """Write a tiny LlamaForSequenceClassification (one output: a Bradley-Terry reward model) with the tiny
    tokenizer and chat template to `path`, for tests of the reward-model oracle."""
    import torch
    from transformers import LlamaConfig, LlamaForSequenceClassification

    path = Path(path)
    fast = _tokenizer(256)
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(fast), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, pad_token_id=fast.pad_token_id,
                         bos_token_id=None, eos_token_id=fast.eos_token_id, num_labels=num_labels)  # fmt: skip
    path.mkdir(parents=True, exist_ok=True)
    LlamaForSequenceClassification(config).save_pretrained(path)
    fast.save_pretrained(path)
    return path


def _tokenizer(vocab_size: int):
    """A byte-level BPE tokenizer trained on the built-in corpus, with ChatML-like specials and chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<|im_start|>", "<|im_end|>"]
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(_CORPUS * 20, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<|im_end|>", bos_token=None)
    fast.chat_template = _CHAT_TEMPLATE
    return fast

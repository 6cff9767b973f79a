"""A scripted causal LM for multi-turn tests: at its k-th assistant turn of a conversation it writes `script[k]` (then
its end-of-turn token) with probability ~1, through the same sampling loop as a real model, so tool calls, malformed
calls, answers and limits can be driven exactly (as trl#6250 and verl's CPU tests script theirs)."""

from types import SimpleNamespace

import torch


class ScriptedLM(torch.nn.Module):
    def __init__(self, tokenizer, scripts):
        """`scripts`: for each conversation (by its prompt's text), the text of each of its assistant turns."""
        super().__init__()
        self.tokenizer, self.scripts = tokenizer, scripts
        self.eos = tokenizer.eos_token_id
        self.vocab = len(tokenizer)
        self.opener = tokenizer("<|im_start|>assistant\n", add_special_tokens=False)["input_ids"]
        self.dummy = torch.nn.Parameter(torch.zeros(1))
        self.generation_config = SimpleNamespace(eos_token_id=self.eos)

    def _next(self, ids):
        """The scripted next token after the real tokens `ids`."""
        text = self.tokenizer.decode(ids)
        key = next(k for k in self.scripts if k in text)
        starts = [i for i in range(len(ids)) if ids[i : i + len(self.opener)] == self.opener]
        turn, start = len(starts) - 1, starts[-1] + len(self.opener)
        script = self.scripts[key]
        target = self.tokenizer(script[min(turn, len(script) - 1)], add_special_tokens=False)["input_ids"]
        target = target + [self.eos]
        done = len(ids) - start
        return target[done] if done < len(target) else self.eos

    def forward(self, input_ids, attention_mask, cache=None, **_):
        if cache is None:  # the prefill: each row's real tokens (under a 4D mask: those its last token attends to)
            seen = attention_mask.bool() if attention_mask.dim() == 2 else attention_mask[:, 0, -1] == 0
            cache = _History([ids[mask].tolist() for ids, mask in zip(input_ids, seen, strict=True)])
        else:  # one new token per row
            cache.append(input_ids[:, -1].tolist())
        logits = torch.full((len(cache.rows), 1, self.vocab), -30.0)
        for i, history in enumerate(cache.rows):
            logits[i, 0, self._next(history)] = 0.0
        return SimpleNamespace(logits=logits, cache=cache)


class _History:
    def __init__(self, rows):
        self.rows = rows

    def reorder_cache(self, idx):
        self.rows = [list(self.rows[i]) for i in idx.tolist()]

    def append(self, tokens):
        for row, t in zip(self.rows, tokens, strict=True):
            row.append(t)

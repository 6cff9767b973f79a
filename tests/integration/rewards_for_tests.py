def explodes(prompts, completions, **_):
    raise RuntimeError("this reward function always fails")


def reply_length(prompts, completions, **_):
    """Dense toy reward in [0, 1) that almost never ties between two replies, so every component sees A != 0."""
    return [(sum(map(ord, c)) % 997) / 997 for c in completions]

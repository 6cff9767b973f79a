def explodes(prompts, completions, **_):
    raise RuntimeError("this reward function always fails")

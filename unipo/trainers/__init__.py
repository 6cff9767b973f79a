"""Training loops: `rl.train(cfg)` (on-policy RL). Shared setup lives in `common` and `checkpoint`."""

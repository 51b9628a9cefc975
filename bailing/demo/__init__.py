"""Demo checkpoints (Ling, Ring, LLaDA2, Ming Preview, Ming 2.0 with its talker): a tiny tokenizer, the
chat templates, random weights in the upstream layouts."""

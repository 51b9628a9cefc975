"""Demo checkpoints (Ling, Ring, LLaDA2, Ming): a tiny tokenizer, the chat templates, random weights
in the upstream layouts."""

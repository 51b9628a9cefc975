"""Demo checkpoints: a tiny tokenizer, the Ling chat template, random weights in upstream layout."""

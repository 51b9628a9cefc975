"""Building blocks that model families compose: norms, rotary, attention, MLP, MoE, embeddings."""

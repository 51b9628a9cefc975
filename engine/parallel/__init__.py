"""Running one model over several ranks: the rank group, how weights split, and the parallel layers.

- `group`: `TensorGroup` (this process's rank in a torch.distributed group; the collectives the
  layers use) and `building(group)`, under which a model is constructed for that rank.
- `split`: pure arithmetic of who holds which heads, rows, vocab entries and experts.
- `linear`: column / row / fused-QKV parallel linears, vocab-parallel embedding and lm_head.
The MoE layer (engine/layers/moe.py) splits its experts by width (tensor parallel) or by expert
(expert parallel) with the same `split` helpers. With one rank every layer is the plain one.
"""

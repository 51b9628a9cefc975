"""The talker's aggregator (upstream `talker_module/aggregator.py`, keys `aggregator.*`): one latent
patch -> one backbone input embedding. It embeds both the generated patch fed back at every AR step
and the prompt-wav patches that fill the `<audioPatch>` slots of the prompt.

Sequence: [cls, P latent frames] with cls = word_embedder.weight[0]; the same pre-norm DiT blocks
(bidirectional, RoPE positions 0..P); FinalLayer to the backbone width; token 0 is the output.
Legend: N = patches, P = frames per patch, C = latent width, D = aggregator width, H = backbone hidden.
"""

from __future__ import annotations

import torch
from torch import nn

from models.ming.speech.dit_layers import BlockStack, FinalLayer
from models.ming.speech.talker_config import BlockStackConfig


class Aggregator(BlockStack):
    def __init__(self, cfg: BlockStackConfig, llm_hidden: int) -> None:
        super().__init__(cfg)
        self.word_embedder = nn.Embedding(1, cfg.hidden_size)  # the CLS row
        self.x_embedder = nn.Linear(cfg.in_channels, cfg.hidden_size)
        self.final_layer = FinalLayer(cfg.hidden_size, llm_hidden)

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        """latents [N, P, C] -> embeddings [N, 1, H]."""
        x = self.x_embedder(latents)  # (N, P, D)
        cls = self.word_embedder.weight[:1].expand(x.shape[0], 1, -1)  # (N, 1, D)
        x = self.run_blocks(torch.cat([cls, x], dim=1))  # (N, 1+P, D)
        # the whole sequence through the final layer, then token 0 (as upstream; slicing first rounds
        # differently in the matmul)
        return self.final_layer(x)[:, :1]  # (N, 1+P, H) -> (N, 1, H)

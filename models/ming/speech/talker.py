"""`BailingTalker2`, the continuous talker of Ming-flash-omni 2.0 (upstream `modeling_bailing_talker.py`):
its module tree mirrors `talker/model.safetensors` (`model.*` transformers' Qwen2Model, `cfm.model.*`
the flow DiT, `aggregator.*`, `stop_head.*`, `spk_head.*`).

Data flow per AR step (driven by `talker_generator.TalkerGenerator`): backbone hidden h -> `sample_patch`
(CFM over the latent history) -> latent patch -> `embed_patches` (aggregator) -> the next backbone input;
`stop_probs(h)` says whether to stop. Prompt side: `speaker_embedding` (CAM++ x-vector -> H) and
`embed_patches` of the prompt-wav latents fill the prompt's slots.
Legend: B = requests, L = tokens, H = backbone hidden, P = patch frames, Hp = history frames,
C = latent width, S = ODE steps, X = x-vector width (192).
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import Qwen2Config, Qwen2Model
from transformers.models.qwen2.modeling_qwen2 import Qwen2RotaryEmbedding

from models.ming.speech.cfm import CFM, ODEStep
from models.ming.speech.dit import DiT
from models.ming.speech.talker_aggregator import Aggregator
from models.ming.speech.talker_config import XVECTOR_DIM, TalkerConfig


class BailingTalker2(nn.Module):
    def __init__(self, cfg: TalkerConfig, backbone: Qwen2Config) -> None:
        super().__init__()
        if backbone.hidden_size != cfg.llm_hidden_size:
            raise ValueError(
                f"backbone hidden_size {backbone.hidden_size} != talker llm_hidden_size {cfg.llm_hidden_size}"
            )
        self.config, self.backbone_config = cfg, backbone
        hidden = backbone.hidden_size
        self.model = Qwen2Model(backbone)
        self.cfm = CFM(DiT(cfg.flow), steps=cfg.steps)
        self.aggregator = Aggregator(cfg.aggregator, hidden)
        self.stop_head = nn.Linear(hidden, 2)
        self.spk_head = nn.Linear(XVECTOR_DIM, hidden)

    def rebuild_rotary(self, device: torch.device) -> None:
        """The backbone's rotary table is a computed (non-persistent) buffer: make it on `device` after
        an empty build. (The DiT/aggregator `inv_freq` buffers are in the checkpoint.)"""
        self.model.rotary_emb = Qwen2RotaryEmbedding(self.backbone_config).to(device)

    def embed_tokens(self, input_ids: torch.Tensor) -> torch.Tensor:
        """ids [..., L] -> [..., L, H]."""
        return self.model.embed_tokens(input_ids)

    def speaker_embedding(self, xvector: torch.Tensor) -> torch.Tensor:
        """CAM++ x-vectors [k, X] -> the embeddings of the speaker slots [k, H]."""
        return self.spk_head(xvector.to(self.spk_head.weight.dtype))

    def embed_patches(self, latents: torch.Tensor) -> torch.Tensor:
        """Latent patches [N, P, C] -> backbone input embeddings [N, 1, H]."""
        return self.aggregator(latents.to(self.aggregator.x_embedder.weight.dtype))

    def sample_patch(
        self,
        h: torch.Tensor,
        history: torch.Tensor,
        y0: torch.Tensor,
        args: torch.Tensor,
        sde_noise: torch.Tensor,
        trace: list[ODEStep] | None = None,
    ) -> torch.Tensor:
        """h [B, 1, H], history [B, Hp, C], y0 [B, P, C], args [3, B, 1, 1], sde_noise [S, B, P, C]
        -> the next latent patch [B, P, C]."""
        return self.cfm.sample(h, history, y0, args, sde_noise, trace)

    def stop_logits(self, h: torch.Tensor) -> torch.Tensor:
        """h [B, 1, H] -> [B, 2]; column 1 is "stop"."""
        return self.stop_head(h[:, -1])

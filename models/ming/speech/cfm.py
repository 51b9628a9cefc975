"""The talker's conditional flow-matching sampler (upstream `talker_module/cfm.py`, keys `cfm.model.*`):
backbone hidden + latent history + noise -> one latent patch, by Euler steps on the DiT's velocity.

Per call: t = sway(EPSS table for `steps`); for k < steps: v = c + (c - u) * cfg from the DiT's
[cond; uncond] rows, y += v * dt, then y += sigma * sqrt(temperature) * sqrt(|dt|) * noise[k] (the SDE
kick; temperature 0 makes the sampler deterministic given y0). Settings are per request so that
several requests' patches can be sampled in one batch.
Legend: B = requests, P = patch frames, Hp = history frames, C = latent width, H = backbone hidden,
S = ODE steps.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from models.ming.speech.dit import DiT

# upstream get_epss_timesteps: "empirically pruned step sampling" grids, in units of 1/32
EPSS_TABLES: dict[int, tuple[int, ...]] = {
    5: (0, 2, 4, 8, 16, 32),
    6: (0, 2, 4, 6, 8, 16, 32),
    7: (0, 2, 4, 6, 8, 16, 24, 32),
    10: (0, 2, 4, 6, 8, 12, 16, 20, 24, 28, 32),
    12: (0, 2, 4, 6, 8, 10, 12, 14, 16, 20, 24, 28, 32),
    16: (0, 1, 2, 3, 4, 5, 6, 7, 8, 10, 12, 14, 16, 20, 24, 28, 32),
}
SWAY_COEF = -1.0  # upstream CFM(sway_sampling_coef=-1)


@dataclass(frozen=True)
class FlowSampling:
    """One request's sampler settings (upstream defaults: the deterministic ODE)."""

    cfg: float = 2.0  # guidance strength: v = c + (c - u) * cfg
    sigma: float = 0.25  # SDE kick scale
    temperature: float = 0.0  # SDE kick variance; 0 = no kick

    def __post_init__(self) -> None:
        for name in ("cfg", "sigma", "temperature"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number, got {value!r}")
        if self.sigma < 0:
            raise ValueError(f"sigma must be >= 0, got {self.sigma}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")


def epss_timesteps(
    steps: int, device: torch.device | None = None, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """The EPSS grid [steps + 1] from 0 to 1; steps without a table get linspace (upstream's fallback)."""
    table = EPSS_TABLES.get(steps)
    if table is None:
        return torch.linspace(0, 1, steps + 1, device=device, dtype=dtype)
    return (1 / 32) * torch.tensor(table, device=device, dtype=dtype)


def sway(t: torch.Tensor, coef: float = SWAY_COEF) -> torch.Tensor:
    """Sway sampling warp t + coef * (cos(pi/2 t) - 1 + t): with coef -1, t = 1 - cos(pi/2 t)."""
    return t + coef * (torch.cos(torch.pi / 2 * t) - 1 + t)


@dataclass(frozen=True)
class ODEStep:
    """What one Euler step saw and produced (for parity checks and debugging)."""

    t: torch.Tensor  # [] the DiT's time
    x: torch.Tensor  # [B, P, C] state before the step
    dit_out: torch.Tensor  # [2B, P, C] raw [cond; uncond] velocities
    v: torch.Tensor  # [B, P, C] guided velocity


def settings_tensor(
    settings: Sequence[FlowSampling], device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    """Per-request (cfg, sigma, temperature) as [3, B, 1, 1] in the sampler's dtype (as upstream's
    `sde_args` tensor)."""
    rows = [[s.cfg, s.sigma, s.temperature] for s in settings]
    return torch.tensor(rows, device=device, dtype=dtype).T[:, :, None, None]  # (B, 3) -> (3, B, 1, 1)


class CFM(nn.Module):
    def __init__(self, model: DiT, steps: int) -> None:
        super().__init__()
        self.model = model
        self.steps = steps

    def timesteps(self, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """The DiT's times [S + 1] after the sway warp, in `dtype` (upstream computes them in the
        model dtype)."""
        return sway(epss_timesteps(self.steps, device, dtype))

    @torch.no_grad()
    def sample(
        self,
        cond: torch.Tensor,
        history: torch.Tensor,
        y0: torch.Tensor,
        args: torch.Tensor,
        sde_noise: torch.Tensor,
        trace: list[ODEStep] | None = None,
    ) -> torch.Tensor:
        """cond [B, 1, H], history [B, Hp, C], y0 [B, P, C], args [3, B, 1, 1] (settings_tensor),
        sde_noise [S, B, P, C] -> the sampled patch [B, P, C]."""
        cfg, sigma, temperature = args[0], args[1], args[2]  # each (B, 1, 1)
        kick = sigma * temperature**0.5  # (B, 1, 1)
        t = self.timesteps(y0.device, y0.dtype)
        y = y0
        for k in range(self.steps):
            dt = t[k + 1] - t[k]
            out = self.model.forward_with_cfg(y, t[k], cond, history)  # (2B, P, C)
            c, u = torch.chunk(out, 2, dim=0)
            v = c + (c - u) * cfg
            if trace is not None:
                trace.append(ODEStep(t=t[k], x=y, dit_out=out, v=v))
            y = y + v * dt
            y = y + kick * dt.abs() ** 0.5 * sde_noise[k]
        return y

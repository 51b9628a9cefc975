"""The shared MoE execution core: config, strict loader, layers, sampler, generation, offline API.

It knows no model family, queue or transport: families plug in through `engine.model_base.CausalLM`
and the `bailing.model_registries` entry point.
"""

from engine.diffusion.params import DiffusionParams
from engine.errors import BailingError, CheckpointError, RequestError, TokenizerError
from engine.llm import LLM
from engine.outputs import RequestOutput
from engine.sampling_params import SamplingParams

__all__ = [
    "LLM",
    "BailingError",
    "CheckpointError",
    "DiffusionParams",
    "RequestError",
    "RequestOutput",
    "SamplingParams",
    "TokenizerError",
]

"""The LLaDA2 family: masked-diffusion BailingMoeV2 chat models that answer directly (no reasoning)."""

from models.family import Family

LLADA2 = Family(name="llada2", architectures=("LLaDA2MoeModelLM",))

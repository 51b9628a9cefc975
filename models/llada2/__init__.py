"""LLaDA2 (`llada2_moe`): the masked-diffusion BailingMoeV2 family."""

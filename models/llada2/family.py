"""The LLaDA2 family: masked-diffusion BailingMoeV2 chat models that answer directly (no reasoning)."""

from models.family import Family, ToolCallTags

# It renders tools with the Ling template and its replies are read for calls; being a diffusion
# model, it cannot be held to a grammar (forced calls, response formats).
LLADA2 = Family(name="llada2", architectures=("LLaDA2MoeModelLM",), tool_calls=ToolCallTags())

"""The Ling family: BailingMoeV2 chat models that answer directly (no reasoning block)."""

from models.family import Family, ToolCallTags

LING = Family(name="ling", architectures=("BailingMoeV2ForCausalLM",), tool_calls=ToolCallTags())

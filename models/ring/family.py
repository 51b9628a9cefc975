"""The Ring family: the BailingMoeV2 architecture (same class as Ling, through the registry) with a
reasoning block. Chat template and generation defaults come from each checkpoint's own files
(tokenizer_config.json, generation_config.json); Ring-mini-2.0's template opens `<think>\\n` in
the generation prompt, so its outputs hold only the closing tag (spec bailing_moe_v2.md section 7).
"""

from models.family import Family, ThinkTags, ToolCallTags

# Tool calls as Ling writes them; Ring-mini-2.0's own template does not show the tools to the model
# (it renders only roles and content), so it calls tools only when told to (tool_choice required).
RING = Family(
    name="ring", architectures=("BailingMoeV2ForCausalLM",), reasoning=ThinkTags(), tool_calls=ToolCallTags()
)

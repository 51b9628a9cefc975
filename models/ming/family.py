"""The Ming family: the Ming-flash-omni thinker (`BailingMM2NativeForConditionalGeneration`), a
multimodal chat model that answers directly (`detailed thinking off` in its default system prompt)."""

from models.family import Family

MING = Family(
    name="ming",
    architectures=("BailingMM2NativeForConditionalGeneration",),
    # text only until the engine passes media at prefill (issue #8): then "image", "audio", "video"
    modalities=("text",),
)

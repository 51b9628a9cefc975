"""The Ming family: the Ming-flash-omni thinker (`BailingMM2NativeForConditionalGeneration`), a
multimodal chat model that answers directly (`detailed thinking off` in its default system prompt).
It takes images, audio and video in its user turns (through `MingProcessor`) and transcribes speech
with the ASR instruction of the official examples."""

from models.family import Family

MING = Family(
    name="ming",
    architectures=("BailingMM2NativeForConditionalGeneration",),
    modalities=("text", "image", "audio", "video"),
    processor="models.ming.processing:MingProcessor",
    transcribe_prompt="Please recognize the language of this speech and transcribe it. Format: oral.",
)

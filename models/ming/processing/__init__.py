"""Ming's media front end: prompt/messages + image/audio/video bytes -> the thinker's inputs.

`MingProcessor.from_pretrained(folder).process(...)` -> `MingInputs` (input_ids, pixel_values,
image_grid_thw, pixel_values_videos, video_grid_thw, audio_feats, audio_feats_lengths,
audio_placeholder_loc_lens). Token-count formulas (`image_grid`, `video_grid`, `audio_tokens`) work
from sizes alone. Every unusable part raises `MediaError` (a RequestError: INVALID_ARGUMENT).
"""

from models.ming.processing.audio import AudioConfig, audio_frames, audio_tokens, decode_audio, log_mel
from models.ming.processing.errors import MediaError
from models.ming.processing.image import ImageConfig, grid_tokens, image_grid, open_image, smart_resize
from models.ming.processing.processor import MingInputs, MingProcessor, configs_from_folder
from models.ming.processing.prompt import (
    DEFAULT_PERSONA,
    SpecialTokens,
    expand_placeholders,
    render_chat,
    system_prompt,
)
from models.ming.processing.video import VideoConfig, frame_size, sample_count, sample_indices, video_grid

__all__ = [
    "DEFAULT_PERSONA",
    "AudioConfig",
    "ImageConfig",
    "MediaError",
    "MingInputs",
    "MingProcessor",
    "SpecialTokens",
    "VideoConfig",
    "audio_frames",
    "audio_tokens",
    "configs_from_folder",
    "decode_audio",
    "expand_placeholders",
    "frame_size",
    "grid_tokens",
    "image_grid",
    "log_mel",
    "open_image",
    "render_chat",
    "sample_count",
    "sample_indices",
    "smart_resize",
    "system_prompt",
    "video_grid",
]

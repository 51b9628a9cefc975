"""Ming-flash-omni (BailingMM2) thinker: config, vision / audio encoders, the MultiRouter language
model, VideoRoPE positions, `BailingMM2NativeForConditionalGeneration` (model.py) and media processing."""

"""Ming's speech output (Ming-flash-omni 2.0 / flash): the continuous talker `BailingTalker2` (Qwen2
backbone, flow-matching DiT head over patches of latent frames, aggregator, stop head) and the
AudioVAE decoder from latent frames to a waveform (Qwen2 backbone, streaming upsample, ISTFT head),
in the upstream `talker/` + `talker/vae/` layout."""

"""Ming-flash-omni (BailingMM2) thinker: config, encoders, language model and media processing."""

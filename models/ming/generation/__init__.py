"""Ming's output heads: image generation from the thinker's query states (connector -> diffusers DiT
loop -> VAE). `generator.ImageGenerator` is the entry point; see its module docstring for the flow."""

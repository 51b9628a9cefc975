"""Per job kind: request -> engine inputs -> response events. `pipelines.protocol` is torch-free."""

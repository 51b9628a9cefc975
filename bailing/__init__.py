"""Bailing Serve: the command line, settings and demo tooling around the engine and models."""

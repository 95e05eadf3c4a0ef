"""The sleep stage of the pipeline (see docs/architecture.md)."""

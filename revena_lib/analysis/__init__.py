"""The analysis stage of the pipeline (see docs/architecture.md)."""

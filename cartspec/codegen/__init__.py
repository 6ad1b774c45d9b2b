"""Code generation: a resolved spec becomes a standalone, readable PyTorch module."""

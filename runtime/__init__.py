"""The one training, evaluation and sampling runtime for every generated model."""

"""The error a model load raises, shared by the modules that resolve, quantize and load models."""


class ModelLoadError(RuntimeError):
    """A model could not be resolved or loaded; the message says which and why."""

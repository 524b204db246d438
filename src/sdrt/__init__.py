"""sdrt: self-distillation with diverse reasoning traces for vision-language models."""

__version__ = "0.1.0"

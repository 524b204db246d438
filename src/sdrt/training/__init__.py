"""Training the small parts on a frozen model: the shared core and the embedded VLM's alignment.

``core``: the LR schedule, the checkpoint folder and the resume rule that alignment and
distillation share. ``align``: the embedded VLM's projector and LoRA (the shipped weights came
from it). Distillation itself lives in ``sdrt.distill``.
"""

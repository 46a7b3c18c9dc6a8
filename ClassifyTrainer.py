"""The training loop, under the original work's name: epochs, validation, best-epoch selection,
checkpoints, and the test of the best checkpoint. The code lives in ``hipx/training/trainer.py``
(``ClassifyTrainer`` and its late-fusion subclass); this file re-exports it.
"""
from hipx.training.trainer import *  # noqa: F401,F403
from hipx.training.trainer import ClassifyTrainer, NonFiniteLossError  # noqa: F401

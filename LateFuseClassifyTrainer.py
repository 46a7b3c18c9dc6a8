"""Late fusion's trainer, under the original work's name: the network gets the image and, separately,
the normalised clinical vector (sex, age, BMI), joined to the pooled image features before the
classifier (late and residual fusion). It differs from :class:`ClassifyTrainer` only in checking the
mode: what reaches the network is decided for every mode by ``fusion.network_inputs``. The code lives
in ``hipx/training/trainer.py``; run folders name it in ``config.json`` (``"trainer"``).
"""
from hipx.training.trainer import LateFuseClassifyTrainer  # noqa: F401

"""Late fusion: the network gets the image and, separately, the normalised clinical vector
(sex, age, BMI), which it joins to the pooled image features before the classifier.

What reaches the network is decided for every mode in one place, :func:`fusion.network_inputs`
(which the base trainer's ``model_inputs`` calls); this class names the trainer of late-fusion
runs (their ``config.json`` says ``"trainer": "LateFuseClassifyTrainer"``) and checks the mode.
"""
from __future__ import annotations

import fusion
from ClassifyTrainer import ClassifyTrainer


class LateFuseClassifyTrainer(ClassifyTrainer):
    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        if not fusion.mode(self.fusion).clinical_vector:
            raise ValueError(f"LateFuseClassifyTrainer trains a network that takes the clinical vector, not "
                             f"{fusion.text(self.fusion)}")

"""Late fusion: the network gets the image and, separately, the normalised clinical vector
(sex, age, BMI), which it joins to the pooled image features before the classifier."""
from __future__ import annotations

import torch

from ClassifyTrainer import ClassifyTrainer


class LateFuseClassifyTrainer(ClassifyTrainer):
    def model_inputs(self, batch: dict) -> tuple[torch.Tensor, ...]:
        return (self.image(batch), batch["clinical"].to(self.device, non_blocking=True))

"""The networks, under the original work's name: DenseNets with the fusion head. The code lives in
``hipx/models/`` (``classifier``, ``densenet``, ``layers``, ``pretrained``); this package re-exports
its builders.
"""
from hipx.models import *  # noqa: F401,F403
from hipx.models import Classifier, build_model, build_model_from_checkpoint, build_model_from_config  # noqa: F401

"""The dataset, under the original work's name: a data folder's images in the original file-name
format -> the network input (the radiograph and its enhanced copy, clinical channels for early
fusion), batches as dicts, and the DataLoaders of a run. The code lives in ``hipx/data/loader.py``;
this file re-exports it.
"""
from hipx.data.loader import *  # noqa: F401,F403
from hipx.data.loader import HipDataset, enhance  # noqa: F401

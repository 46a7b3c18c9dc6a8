"""Inference: a trained run's network and what it is used for. Imports ``hipx.core``, ``data``, ``prepare``,
``stats``, ``models`` and ``runs``.

    network   the one builder of a run's network: started from nothing (pretrained weights, residual fusion's
              clinical start) or from a checkpoint
    clinical  the clinical models fitted on a run's training images (residual fusion's start, the baseline's model)
    predict   scoring images (data-folder crops or a hospital's raw files) with a run, a fold ensemble or an ONNX export
    cam       class activation maps, one function per method; heatmaps: the pictures of visualize_gradcam.py
    export    a run or fold ensemble as one ONNX graph with its preprocessing as JSON
"""

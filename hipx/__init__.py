"""hipx: the library under the suite's commands (main.py, preprocess_filenames.py, visualize_gradcam.py,
predict.py, report.py, compare.py, pretrain.py, export.py, synthetic.py, augment.py, bench.py).

One folder per concern; a folder imports only the folders listed below it, never a command and never
one above it (the layers, from the bottom)::

    core        the vocabulary users choose from, configuration, runtime, command-line helpers, atomic writes
    data        file names, splits and folds, decoding, the femur region, augmentation, the dataset
    prepare     hospital export or demo generator -> data folder            (core, data)
    stats       metrics, confidence intervals, net benefit                   (core)
    models      the networks and their fusion head                           (core)
    runs        the run folder and group: written, read back, checked        (core, data)
    inference   a run's network built, scoring images, heatmaps, ONNX export  (core, data, prepare, stats, models, runs)
    reports     the run report, measurement, CV summary, external validation, comparisons (all of the above)
    training    the loop, the session a command starts, cross-validation, pretraining (all of the above)

docs/layout.md lists every module and where to add a fusion mode, a target kind, a report section or an
augmentation.
"""

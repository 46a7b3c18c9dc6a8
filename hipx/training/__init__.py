"""Training: what ``main.py`` and ``pretrain.py`` run, below the commands and above every other folder.

    options     main.py's flags and the checked configuration they make (no torch: --help answers at once)
    session     one run folder (or a cross-validation's folds) trained, resumed or tested, start to end
    loaders     a run's data loaders and the checks on its splits
    trainer     the loop: epochs, validation, best epoch, checkpoints, the test of the best checkpoint
    board       --tensorboard: the event files the loop and pretraining write into the run folder
    losses      the binary losses; crossval the K folds of --folds K; pretrain and selfsup the SimCLR encoder

May import every folder of hipx (core, data, prepare, stats, models, runs, inference, reports); never a
command. A run's network is built by hipx.inference.network, for training and for every later use.
"""

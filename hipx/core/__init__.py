"""The core: what every other folder builds on, importing nothing of the package.

    choices     the vocabularies users choose from (augmentations, outcome kinds, CAM methods, ...), torch-free
    fusion      the fusion modes: what reaches the network, and the probability a run reports
    targets     the training targets (binary, ordinal, continuous) and their one osteoporosis score
    measures    the measurement behind a label (T-score, BMD, grade) per image, from manifest.csv
    runconfig   a run's typed configuration (what config.json and every checkpoint hold)
    runtime     device, threads, seeding, logging, progress bars, torchrun
    cli         the scripts' shared flags and entry point (a user's mistake is one line)
    files       atomic writes (temporary file, then os.replace)
"""

"""Data: from image files to the network's input. Imports ``hipx.core`` only.

    filenames      the file-name format <patient>_<crop>_<label>-<sex>-<age>-<bmi>.<ext>
    splits, folds  train/val/test by patient; cross-validation folds (two designs)
    subsets        nested patient subsets of a training side (learning curves)
    imaging        decoding (PNG, JPEG, TIFF, DICOM, .npy) and shaping of images
    roi            the proximal-femur region of interest in a pelvis view
    preprocessing  a data folder's recorded pipeline, repeated on a new raw image
    augment        training-time augmentations, pure functions of (image, rng); augment_device: on the GPU
    loader         the dataset: enhancement, the clinical vector, batches as dicts, a run's DataLoaders
"""

"""Preparing a data folder: a hospital export or the demo generator -> data/train|val|test. Imports
``hipx.core`` and ``hipx.data``.

    patient_table  reading and checking the patient list (patient_list.csv)
    datafolder     writing the data folder (images, manifest.csv, skipped.csv), resumably
    export         preprocess_filenames.py's work: the table, the patients' splits, the data folder
    synthetic      the demo's synthetic radiographs (regimes, a second site, pelvis views)
"""

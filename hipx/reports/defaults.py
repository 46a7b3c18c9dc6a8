"""The report commands' defaults that their parsers show: stdlib only, so that ``report.py --help``
answers without loading the libraries the reports need."""

GALLERY = 2  # test images per outcome (TP, TN, FP, FN) in the run report's case gallery (report.py --gallery)

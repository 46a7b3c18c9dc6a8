"""The run folder outs/<save_dir>/fold<fold>/ and the run group above it: everything written into it and
read back (runfiles), and the checks on an existing run for --test and --resume (runchecks). Imports
``hipx.core`` and ``hipx.data``.
"""

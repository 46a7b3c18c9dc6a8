"""Statistics: pure functions of labels, probabilities and weights. Imports ``hipx.core`` only.

    metrics          test metrics of (y_true, y_prob, threshold); one weighted core
    confidence       bootstrap (percentile, BCa) and clustered DeLong intervals, paired differences, calibration
    decision         net benefit (decision curves)
    evaluation       every number a model's probabilities get, with intervals
    clinical_models  the clinical-only models residual fusion starts from (logistic, ridge, cumulative link)
    learning_curve   inverse power law fits of AUC against patients, extrapolated with intervals
"""

"""The reports: what a finished run, a cross-validation, another hospital's data or several runs show.

    run_report   the run report (report.py --run): its numbers, written as report.md/.html/_metrics.json
    cv           the cross-validation summary (report.py --cv)
    external     external validation and recalibration (report.py --external)
    recalibration  a run recalibrated on its own validation images (report.py --run RUN --recalibrate)
    compare      several runs side by side on the same test patients (compare.py)
    measurement  predicted against measured value of a graded target, a section of the reports above
    baseline     the clinical-only baseline (age, sex, BMI) the network is compared with
    learning_curve  a cross-validation's learning curve (main.py --learning_curve): points, fits, figure
    gallery      the run report's case gallery, with heatmaps
    model_card   model_card.md beside every run report and CV summary, filled from their numbers
    cohort       who a split's images are (counts, prevalence, clinical values) and the clinical subgroups
    render       the figures, the block language and its Markdown/HTML renderers, the reports' sections
    style        colours, the figures' look and PNG encoding, the text of numbers and intervals
    defaults     the report commands' defaults their parsers show (stdlib only)

Imports run one way inside: style <- measurement <- render <- model_card <- cv, external <- recalibration
<- run_report <- compare; cohort imports none of them, and cv and run_report import it; learning_curve imports
baseline, and cv imports it.
The folder may import every folder of hipx below it (core, data, prepare, stats, models, runs,
inference), never training or a command.
"""

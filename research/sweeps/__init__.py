"""Sweeps and scaling laws on the one trainer: every trial is an ordinary training run in its own
workdir; Optuna's study (journal file or database) coordinates workers.

space.py (what a sweep declares: Sweep, loguniform/uniform/integer/choice, fixed designs, trial
ids), storage.py (journal file or database; SQLite refused for many machines), study.py (the study, handing
out trials, leases and takeover), pruning.py (median / ASHA over the other trials), worker.py (slots of
parallel trials on one machine), trial_run.py (one trial's child process, pruning from its
metrics), devices.py (splitting local accelerators), gang.py (a multi-host trial: host 0 chooses,
the others follow), shapes.py (--dry_run over every trial shape), scaling.py (fits of L(N, D):
Chinchilla's approaches 2 and 3 with bootstrap intervals); the reports: report.py (a sweep's or a
run's), table.py (trial rows, CSV), runs.py (a run's metrics and summary), plots.py + optuna_plots.py +
figures.py (charts), scaling_report.py (fits of a sweep's trials), run_report.py (one run's charts).
"""
from research.sweeps.space import Param, Sweep, choice, integer, loguniform, uniform

__all__ = ["Param", "Sweep", "choice", "integer", "loguniform", "uniform"]

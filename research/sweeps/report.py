"""Reports of finished work, for scripts/report.py and the end of scripts/sweep.py: a sweep's
directory (DIR/sweep.json) gets its trial table (printed, OUT/trials.csv), its charts (plots.py)
and, when its trials vary model size and tokens, the scaling-law fits (scaling_report.py); a single
run's directory (DIR/metrics.jsonl) gets the run report (run_report.py). OUT is DIR unless given.
Reads the workdirs only; writes only under OUT."""
from __future__ import annotations

import os

from research.sweeps import table
from research.sweeps.run_report import write_run_report
from research.sweeps.table import ReportError

__all__ = ["ReportError", "kind_of", "write_report", "write_run_report", "write_sweep_report"]


def kind_of(workdir: str) -> str:
  """'sweep' or 'run'; ReportError naming what was expected when it is neither."""
  if os.path.isfile(os.path.join(workdir, "sweep.json")):
    return "sweep"
  if os.path.isfile(os.path.join(workdir, "metrics.jsonl")):
    return "run"
  what = "does not exist" if not os.path.exists(workdir) else "has neither"
  raise ReportError(f"{workdir} {what}" + (" sweep.json (a sweep's workdir) nor metrics.jsonl (a run's workdir)"
                                            if what == "has neither" else
                                            "; expected a sweep's workdir (sweep.json) or a run's (metrics.jsonl)"))


def write_sweep_report(sweep_dir: str, log=print, out_dir: str | None = None, bootstrap: int = 100) -> dict:
  """The table (printed and OUT/trials.csv), the charts and the scaling fits when they apply.
  Returns {"sweep": sweep.json, "rows": [rows, best first], "csv": path, "plots": [paths],
  "scaling": the fits' dict or None}."""
  from research.sweeps.plots import write_sweep_plots
  from research.sweeps.scaling_report import write_scaling_report
  out_dir = out_dir or sweep_dir
  sweep, rows = table.read_trials(sweep_dir)
  log(table.format_table(sweep, rows))
  csv_path = table.write_csv(sweep, rows, os.path.join(out_dir, "trials.csv"))
  log(f"table: {csv_path}")
  scaling = write_scaling_report(rows, out_dir, log=log, bootstrap=bootstrap)
  plots = write_sweep_plots(sweep, rows, table.trial_curves(rows), out_dir, log=log)
  if scaling and scaling.get("plot"):
    plots.append(scaling["plot"])
  log(f"plots: {len(plots)} charts under {os.path.join(out_dir, 'plots')}")
  return {"sweep": sweep, "rows": rows, "csv": csv_path, "plots": plots, "scaling": scaling}


def write_report(workdir: str, log=print, out_dir: str | None = None, bootstrap: int = 100) -> dict:
  """A sweep's report or a run's, whichever `workdir` is."""
  if kind_of(workdir) == "sweep":
    return write_sweep_report(workdir, log=log, out_dir=out_dir, bootstrap=bootstrap)
  return write_run_report(workdir, log=log, out_dir=out_dir)

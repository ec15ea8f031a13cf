"""The scaling-law part of a sweep's report: when the completed trials vary both model size and
tokens, fit Chinchilla's approach 3 (L(N, D), N = the run's parameters, D = its tokens, L = its
final metric) and, where the trials form IsoFLOP groups, approach 2; print them beside the
published fit; write OUT/scaling.json and OUT/plots/scaling.png. The fits are scaling.py's.

A trial's compute budget: its "flops_budget" param when the sweep has one, else C = 6 N D with
runs whose C agree within 5% sharing one budget (their geometric mean), since a swept grid of
steps rounds each run's tokens a little differently."""
from __future__ import annotations

import json
import math
import os

import numpy as np

from research.sweeps import figures
from research.sweeps.scaling import CHINCHILLA, LawFit, fit_approach2, fit_approach3
from research.sweeps.table import format_number

MIN_RUNS = 5
BUDGET_TOLERANCE = 0.05
PUBLISHED = LawFit(**CHINCHILLA)


def scaling_runs(rows: list[dict]) -> list[dict]:
  """The completed trials a fit can use: {trial_id, n, d, loss, budget (its flops_budget or None)}."""
  out = []
  for row in rows:
    n, d, loss = row.get("parameters"), row.get("tokens"), row.get("final")
    if row["status"] != "complete" or not all(isinstance(x, (int, float)) for x in (n, d, loss)):
      continue
    if n > 0 and d > 0 and loss > 0 and math.isfinite(loss):
      budget = row["params"].get("flops_budget")
      out.append({"trial_id": row["trial_id"], "n": float(n), "d": float(d), "loss": float(loss),
                  "budget": float(budget) if isinstance(budget, (int, float)) else None})
  return out


def applicable(runs: list[dict]) -> str | None:
  """None when a fit of L(N, D) can run, else why not."""
  if len(runs) < MIN_RUNS:
    return f"needs {MIN_RUNS} or more completed trials with parameters and tokens, has {len(runs)}"
  if len({r["n"] for r in runs}) < 2 or len({r["d"] for r in runs}) < 2:
    return "the completed trials do not vary both model size and tokens"
  return None


def cluster_budgets(compute, tolerance: float = BUDGET_TOLERANCE) -> np.ndarray:
  """Each value replaced by the geometric mean of its cluster: sorted values join a cluster while
  within `tolerance` (relative) of its smallest."""
  compute = np.asarray(compute, float)
  order = np.argsort(compute)
  out = np.empty_like(compute)
  start = 0
  for i in range(1, len(order) + 1):
    if i == len(order) or compute[order[i]] > compute[order[start]] * (1 + tolerance):
      members = order[start:i]
      out[members] = compute[members[0]] if len(members) == 1 else float(np.exp(np.mean(np.log(compute[members]))))
      start = i
  return out


def budgets(runs: list[dict]) -> tuple[np.ndarray, str]:
  """(each run's budget, where it came from)."""
  if all(r["budget"] is not None for r in runs):
    return np.asarray([r["budget"] for r in runs]), "the flops_budget param"
  return cluster_budgets([6 * r["n"] * r["d"] for r in runs]), f"6 N D, within {BUDGET_TOLERANCE:.0%} grouped"


def _interval(fit, name: str) -> str:
  lo_hi = fit.intervals.get(name)
  return f"[{format_number(lo_hi[0])}, {format_number(lo_hi[1])}]" if lo_hi else ""


def _lines(law: LawFit, count: int, iso, iso_skipped: str | None, budget_values) -> list[str]:
  lines = [f"scaling: approach 3 on {count} runs, L(N, D) = E + A/N^alpha + B/D^beta (95% bootstrap intervals)",
           f"  {'':<11}{'fitted':>11}  {'interval':<24}{'Chinchilla':>11}"]
  for name in ("E", "A", "B", "alpha", "beta"):
    lines.append(f"  {name:<11}{format_number(getattr(law, name)):>11}  {_interval(law, name):<24}"
                 f"{format_number(CHINCHILLA[name]):>11}")
  for name, label in (("n_exponent", "a (N_opt ~ C^a)"), ("d_exponent", "b (D_opt ~ C^b)")):
    lines.append(f"  {label}: approach 3 {getattr(law, name):.3f} {_interval(law, name)}"
                 + (f", approach 2 {getattr(iso, name):.3f} {_interval(iso, name)}" if iso else "")
                 + f"; Chinchilla's constants {getattr(PUBLISHED, name):.3f}")
  if iso is None:
    lines.append(f"  approach 2: skipped ({iso_skipped})")
  lines.append("  fitted / published: " + ", ".join(
      f"{n} {getattr(law, n) / getattr(PUBLISHED, n):.2f}" for n in ("alpha", "beta", "n_exponent"))
      + (f", approach 2's a {iso.n_exponent / PUBLISHED.n_exponent:.2f}" if iso else ""))
  for c in budget_values:
    n3, d3 = law.optimal(c)
    text = f"  C = {c:.3g} FLOPs: N_opt {n3:.3g}, D_opt {d3:.3g} (approach 3)"
    if iso is not None:
      n2, d2 = iso.optimal(c)
      text += f"; N_opt {n2:.3g}, D_opt {d2:.3g} (approach 2)"
    lines.append(text)
  return lines


def plot_scaling(runs: list[dict], law: LawFit, iso, budget: np.ndarray, path: str) -> str:
  """Loss vs N with approach 3's curves per D; the IsoFLOP groups with their parabolas and minima
  (approach 2); N_opt(C) from both."""
  import matplotlib
  n, d, loss = (np.asarray([r[k] for r in runs]) for k in ("n", "d", "loss"))
  fig, axes = figures.figure(1, 3 if iso is not None else 2, width=5.2)
  ax = axes[0]
  grid_n = np.logspace(np.log10(n.min()) - 0.15, np.log10(n.max()) + 0.15, 100)
  ds = np.unique(d)
  per_d = len(ds) <= 8
  cmap = matplotlib.colormaps["viridis"]
  groups = ds if per_d else np.unique(budget)
  for i, g in enumerate(groups):
    colour = cmap(i / max(1, len(groups) - 1))
    at = d == g if per_d else budget == g
    ax.scatter(n[at], loss[at], color=colour, s=25, label=(f"D={g:.2g}" if per_d else f"C={g:.2g}"))
    curve = law.loss(grid_n, g) if per_d else law.loss(grid_n, g / (6 * grid_n))
    ax.plot(grid_n, curve, color=colour, linewidth=1)
  ax.set(xscale="log", xlabel="parameters N", ylabel="final loss",
         title="approach 3: L(N, D) per " + ("D" if per_d else "budget"))
  ax.legend(fontsize=7)
  if iso is not None:
    ax = axes[1]
    minima = {c: (nm, lm) for c, nm, lm in iso.minima}
    for i, c in enumerate(np.unique(budget)):
      colour = cmap(i / max(1, len(np.unique(budget)) - 1))
      at = budget == c
      ax.scatter(n[at], loss[at], color=colour, s=25, label=f"C={c:.2g}")
      if at.sum() >= 3:
        x = np.log(n[at])
        coefficients = np.polyfit(x, loss[at], 2)
        xs = np.linspace(x.min(), x.max(), 60)
        ax.plot(np.exp(xs), np.polyval(coefficients, xs), color=colour, linewidth=1)
      if float(c) in minima:
        ax.scatter(*minima[float(c)], marker="*", s=160, color=colour, edgecolors="black", zorder=3)
    ax.set(xscale="log", xlabel="parameters N", ylabel="final loss", title="approach 2: IsoFLOP parabolas, minima *")
    ax.legend(fontsize=7)
  ax = axes[-1]
  cs = np.logspace(np.log10(budget.min()) - 0.5, np.log10(budget.max()) + 0.5, 50)
  ax.plot(cs, law.optimal(cs)[0], label=f"approach 3: a={law.n_exponent:.2f}")
  if iso is not None:
    ax.plot(cs, iso.optimal(cs)[0], linestyle="--", label=f"approach 2: a={iso.n_exponent:.2f}")
    ax.scatter([m[0] for m in iso.minima], [m[1] for m in iso.minima], marker="*", s=80, color="black",
               label="IsoFLOP minima")
  ax.scatter(6 * n * d, n, s=10, color="gray", alpha=0.6, label="runs (6ND, N)")
  ax.set(xscale="log", yscale="log", xlabel="compute C (FLOPs)", ylabel="N_opt",
         title=f"compute-optimal N (Chinchilla's a={PUBLISHED.n_exponent:.2f})")
  ax.legend(fontsize=7)
  return figures.save(fig, path)


def write_scaling_report(rows: list[dict], out_dir: str, log=print, bootstrap: int = 100) -> dict | None:
  """The fits as a dict (also OUT/scaling.json), or None with a printed reason when they do not apply."""
  runs = scaling_runs(rows)
  reason = applicable(runs)
  if reason:
    log(f"scaling: not fitted: {reason}")
    return None
  n, d, loss = (np.asarray([r[k] for r in runs]) for k in ("n", "d", "loss"))
  law = fit_approach3(n, d, loss, bootstrap=bootstrap)
  budget, source = budgets(runs)
  iso, iso_skipped = None, None
  try:
    iso = fit_approach2(budget, n, loss, bootstrap=bootstrap)
  except ValueError as e:
    iso_skipped = str(e)
  budget_values = sorted({float(c) for c in budget if (budget == c).sum() >= 3}) or sorted(set(budget.tolist()))
  for line in _lines(law, len(runs), iso, iso_skipped, budget_values):
    log(line)
  result = {"approach3": law.as_dict(), "approach2": iso.as_dict() if iso else None, "approach2_skipped": iso_skipped,
            "published": dict(CHINCHILLA), "budget_source": source,
            "optimal": [{"compute": c, "approach3": [float(v) for v in law.optimal(c)],
                         "approach2": [float(v) for v in iso.optimal(c)] if iso else None} for c in budget_values],
            "runs": [{**r, "compute": float(c)} for r, c in zip(runs, budget)]}
  os.makedirs(out_dir, exist_ok=True)
  with open(os.path.join(out_dir, "scaling.json"), "w") as f:
    json.dump(result, f, indent=1)
  try:
    result["plot"] = plot_scaling(runs, law, iso, budget, os.path.join(out_dir, "plots", "scaling.png"))
  except Exception as e:    # noqa: BLE001  the fit stands without its chart
    log(f"plots: skipped scaling.png: {type(e).__name__}: {e}")
  return result

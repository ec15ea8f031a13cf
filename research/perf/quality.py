"""Quality runs: the training results README.md and PERFORMANCE.md quote, rerun end to end.

A speed change is not done until these are re-measured: a change of the order rows reach the model
once cost the nanoGPT reproduction 0.1 nats unnoticed (PERFORMANCE.md, Reproductions). Each run is
the real trainer on the real experiment file, from step 0 in its own workdir; the report gives each
final eval loss beside the recorded value and whether it is within the run's tolerance (seed noise
measured across seeds, see PERFORMANCE.md).
"""
from __future__ import annotations

import dataclasses
import os
import time


@dataclasses.dataclass(frozen=True)
class QualityRun:
  config: str               # experiment file
  recorded: float           # final eval loss recorded in README/PERFORMANCE (seed = the experiment's)
  tolerance: float          # |measured - recorded| allowed (seed-to-seed spread, with margin)
  published: float | None   # the reference implementation's number, where there is one
  needs_char_data: bool = False  # --config.data.path must point at nanoGPT's tinyshakespeare input.txt
  overrides: tuple[str, ...] = ()
  starts_from: str = ""     # a run this one finetunes (finetune.init_from its workdir; trained first if absent)


RUNS = {
    "nanogpt_char": QualityRun("experiments/nanogpt_shakespeare_char.py", recorded=1.8991, tolerance=0.03,
                               published=1.88, needs_char_data=True),
    "default": QualityRun("experiments/default.py", recorded=4.4144, tolerance=0.02, published=None),
    "finetune_folio": QualityRun("experiments/finetune_folio.py", recorded=4.0055, tolerance=0.02,
                                 published=None, starts_from="default"),
}


def run_quality(names, workdir_root: str, char_data: str = "", seeds=(), log=print) -> dict:
  """Trains each named run (for each seed, or the experiment's own seed) and compares its final eval
  loss with the recorded one. Returns {'runs': [...], 'all_within_tolerance': bool}."""
  from research.config.cli import load_config
  from research.train.trainer import train
  unknown = [n for n in names if n not in RUNS]
  if unknown:
    raise ValueError(f"--quality_runs: unknown run(s) {unknown}; choose from {', '.join(RUNS)}")
  results = []
  names = list(names)
  for name in list(names):  # a finetuning run's starting point is trained first, unless it is there
    start = RUNS[name].starts_from
    if start and start not in names[:names.index(name)] and not all(
        _finished(workdir_root, start, seed) for seed in seeds or (None,)):
      names.insert(names.index(name), start)
  for name in names:
    run = RUNS[name]
    overrides = list(run.overrides) + ["--config.train.progress=false", "--config.train.sample_at_end=0"]
    if run.needs_char_data:
      if not char_data or not os.path.isfile(char_data):
        raise ValueError(f"--char_data={char_data!r}: run {name} needs nanoGPT's tinyshakespeare input.txt "
                         "(data/shakespeare_char/input.txt of karpathy/nanoGPT)")
      overrides.append(f"--config.data.path={char_data}")
    for seed in seeds or (None,):
      extra = [f"--config.seed={seed}"] if seed is not None else []
      if run.starts_from:  # the starting run of the same seed
        extra.append(f"--config.finetune.init_from={_workdir(workdir_root, run.starts_from, seed)}")
      cfg = load_config(run.config, overrides + extra)
      workdir = _workdir(workdir_root, name, cfg.seed)
      t0 = time.time()
      summary = train(cfg, workdir, log=lambda *a: None, resume="fresh")
      loss = summary["final_eval_loss"]
      within = bool(abs(loss - run.recorded) <= run.tolerance)
      results.append({"run": name, "config": run.config, "seed": cfg.seed, "final_eval_loss": loss,
                      "recorded": run.recorded, "tolerance": run.tolerance, "within_tolerance": within,
                      "published": run.published, "train_seconds": summary["train_seconds"],
                      "wall_seconds": time.time() - t0, "workdir": workdir,
                      "initial_eval_loss": (summary.get("initial_eval") or {}).get("eval_loss")})
      log(f"quality: {name} seed {cfg.seed}: final eval loss {loss:.4f} (recorded {run.recorded:.4f} "
          f"+- {run.tolerance}; {'ok' if within else 'NOT within tolerance'})")
  return {"mode": "quality", "runs": results,
          "all_within_tolerance": all(r["within_tolerance"] for r in results)}


def _workdir(root: str, name: str, seed: int | None) -> str:
  """A run's workdir: <root>/<name>-seed<seed> (the experiment's own seed by default)."""
  if seed is None:
    from research.config.cli import load_config
    seed = load_config(RUNS[name].config, []).seed
  return os.path.join(root, f"{name}-seed{seed}")


def _finished(root: str, name: str, seed: int | None) -> bool:
  return os.path.isfile(os.path.join(_workdir(root, name, seed), "summary.json"))

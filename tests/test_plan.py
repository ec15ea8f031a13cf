"""Planning for TPU topologies on this CPU machine (libtpu compiles for chips we do not have)."""
import os
import subprocess
import sys

import pytest

pytest.importorskip("libtpu", reason="the planner needs libtpu: pip install -r requirements-tpu.txt")

from research.config import base_config  # noqa: E402
from research.models import apply_preset  # noqa: E402
from research.plan import PlanError  # noqa: E402
from research.plan.dry_run import format_report, plan_for_target  # noqa: E402
from tests.helpers import ROOT  # noqa: E402


def _cfg(preset="llama-tiny", mesh=(-1, 1, 1), batch=8, seq=32, **model):
  c = base_config()
  apply_preset(c.model, preset)
  c.model.vocab_size = c.model.vocab_size or 256
  c.model.update(model)
  c.train.batch_size, c.train.seq_len = batch, seq
  c.mesh.shape = mesh
  return c


@pytest.mark.parametrize("target,devices", [("v5e:2x2", 4), ("v5p:2x2x2", 8)])
def test_tiny_model_compiles_for_tpu_targets(target, devices):
  r = plan_for_target(_cfg(), target)
  assert r["devices"] == devices and r["fits"]
  m = r["memory"]
  assert 0 < m["params"] < m["total"] < r["usable_hbm_bytes_per_device"]
  assert r["model_flops_per_step"] > 0 and r["estimated_step_seconds"] > 0
  assert "all-reduce" in r["collectives"]  # the data-parallel gradient reduction
  text = format_report(r)
  assert "FITS" in text and "per device: parameters" in text


def test_doubling_fsdp_halves_parameter_and_optimizer_bytes():
  kw = dict(preset="llama-tiny", embed_dim=128, mlp_dim=256, num_heads=4, num_kv_heads=2, vocab_size=512)
  two = plan_for_target(_cfg(mesh=(4, 2, 1), **kw), "v5p:2x2x2")["memory"]
  four = plan_for_target(_cfg(mesh=(2, 4, 1), **kw), "v5p:2x2x2")["memory"]
  ratio = (four["params"] + four["optimizer_state"]) / (two["params"] + two["optimizer_state"])
  assert 0.45 < ratio < 0.6, ratio


def test_two_slices_build_a_hybrid_mesh():
  cfg = _cfg(mesh=(2, 2, 1))
  r = plan_for_target(cfg, "v5e:2x2", slices=2)
  assert r["devices"] == 8 and r["mesh"] == {"data": 4, "fsdp": 2, "tensor": 1} and r["fits"]
  from research.plan.dry_run import target_mesh
  from research.plan.targets import tpu_devices
  mesh = target_mesh(_cfg(mesh=(2, 2, 1)), tpu_devices("v5e:2x2", 2), 2)
  slices = [[d.slice_index for d in row.flat] for row in mesh.devices]
  assert slices == [[0] * 2, [0] * 2, [1] * 2, [1] * 2]  # data parallel across slices, fsdp inside


def test_errors_have_distinct_codes(monkeypatch):
  with pytest.raises(PlanError) as e:
    plan_for_target(_cfg(), "v7x:2x2")
  assert e.value.code == 6
  with pytest.raises(PlanError) as e:
    plan_for_target(_cfg(mesh=(3, 1, 1)), "v5e:2x2")
  assert e.value.code == 4 and "mesh.shape" in str(e.value)
  import research.plan.targets as targets
  monkeypatch.setattr(targets.importlib.util, "find_spec", lambda name: None)
  with pytest.raises(PlanError) as e:
    plan_for_target(_cfg(), "v5e:2x2")
  assert e.value.code == 5 and "requirements-tpu.txt" in str(e.value)


def _dry_run_llama3_8b(tmp_path, settings: str, *flags):
  """scripts/train.py --dry_run on a Llama 3 8B experiment (FSDP over every device) with `settings`."""
  exp = tmp_path / "llama3_8b.py"
  exp.write_text("from research.config import base_config\nfrom research.models import apply_preset\n"
                 "def get_config():\n  c = base_config()\n  apply_preset(c.model, 'llama3-8b')\n"
                 f"{settings}  c.mesh.shape = (1, -1, 1)\n  return c\n")
  return subprocess.run([sys.executable, "scripts/train.py", f"--config={exp}", "--dry_run", *flags], cwd=ROOT,
                        env=dict(os.environ, PYTHONPATH=ROOT), capture_output=True, text=True, timeout=600)


def test_oversized_config_does_not_fit_with_exit_code_3(tmp_path):
  proc = _dry_run_llama3_8b(tmp_path, "  c.model.scan_layers = True\n  c.train.batch_size, c.train.seq_len = 4, 512\n",
                            "--target=v5e:2x2")
  assert proc.returncode == 3, proc.stdout[-2000:] + proc.stderr[-2000:]
  assert "DOES NOT FIT" in proc.stdout
  assert proc.stderr.strip().splitlines()[-1].startswith("error: does not fit")


def test_autofit_layout_trains_on_8_cpu_devices_like_the_default(tiny_cfg, tmp_path):
  from research.config.cli import apply_overrides, split_argv
  from research.plan.autofit import autofit, overrides_for
  from research.train.trainer import train
  tiny_cfg.model.vocab_size = 320  # explicit (planning needs no tokenizer); the byte tokenizer has 259 ids
  tiny_cfg.train.num_steps, tiny_cfg.train.eval_every, tiny_cfg.train.sample_at_end = 6, 0, 0
  rows = autofit(tiny_cfg, "v5p:2x2x2", policies=("full",), log=lambda *a: None)
  assert rows[0]["fits"] and all(r["compiled"] for r in rows if r["fits"])
  assert [r["estimated_tokens_per_sec"] for r in rows if r["fits"]] == sorted(
      (r["estimated_tokens_per_sec"] for r in rows if r["fits"]), reverse=True)
  flagfile = tmp_path / "best.flags"
  flagfile.write_text("\n".join(overrides_for(rows[0], 1)) + "\n")
  _, overrides = split_argv(["train.py", f"--flagfile={flagfile}"])
  best_cfg = apply_overrides(tiny_cfg.copy_and_resolve_references(), overrides)
  assert tuple(best_cfg.mesh.shape) == rows[0]["layout"]
  base = train(tiny_cfg, str(tmp_path / "base"), log=lambda *a: None)
  fitted = train(best_cfg, str(tmp_path / "best"), log=lambda *a: None)
  assert fitted["final_eval_loss"] == pytest.approx(base["final_eval_loss"], rel=1e-4)


def _mid_llama(mesh, remat):
  c = _cfg(mesh=mesh, batch=16, seq=512, num_layers=4, embed_dim=256, mlp_dim=768, num_heads=8, num_kv_heads=4,
           vocab_size=4096, max_seq_len=512, dtype="bfloat16", scan_layers=True, remat=remat)
  return c


@pytest.mark.parametrize("mesh,remat", [((1, 8, 1), "full"), ((2, 2, 2), "full"), ((8, 1, 1), "dots_saveable")])
def test_analytic_estimate_matches_compiled_cpu_memory(mesh, remat):
  import jax
  from research.perf.compiled import memory_report
  from research.plan.gpu_estimate import estimate_memory
  from research.sharding import make_mesh
  from research.train.program import build_program
  cfg = _mid_llama(mesh, remat)
  program = build_program(cfg, make_mesh(mesh, jax.devices()))
  compiled = memory_report(program.compile_train_step(), program.abstract_state(), program.abstract_batch(16, 512))
  estimate = estimate_memory(cfg, mesh, 8)
  assert 0.8 < estimate["total"] / compiled["total"] < 1.2, (estimate["total"], compiled["total"])


def test_analytic_estimate_matches_compiled_tpu_memory():
  from research.plan.gpu_estimate import estimate_memory
  cfg = _mid_llama((1, 8, 1), "full")
  cfg.train.batch_size, cfg.train.seq_len, cfg.model.max_seq_len = 8, 2048, 2048
  estimate = estimate_memory(cfg, (1, 8, 1), 8)
  compiled = plan_for_target(cfg, "v5p:2x2x2")["memory"]
  assert 0.8 < estimate["total"] / compiled["total"] < 1.2, (estimate["total"], compiled["total"])


@pytest.mark.parametrize("remat", ["none", "dots_saveable"])
def test_analytic_estimate_flash_attention_keeps_no_probabilities(remat):
  """attention_impl=cudnn: the [H, L] terms per token and layer go (xla keeps them), nothing else moves."""
  from research.plan.gpu_estimate import estimate_memory
  cfg = _mid_llama((1, 8, 1), remat)
  xla = estimate_memory(cfg, (1, 8, 1), 8)
  cfg.model.attention_impl = "cudnn"
  flash = estimate_memory(cfg, (1, 8, 1), 8)
  tokens, h, length, layers = 16 * 512 / 8, 8, 512, 4
  full_set = (2 + 1) * h * length - 4 * h      # bf16 probabilities + 1 byte, vs the f32 log-sum-exp
  # every layer's kept set, plus (under remat) the recomputed layer's full set
  expected = tokens * (full_set * layers if remat == "none" else 4 * h * length * layers + full_set)
  assert xla["activations"] - flash["activations"] == pytest.approx(expected)
  assert {k: v for k, v in xla.items() if k not in ("activations", "total")} == \
         {k: v for k, v in flash.items() if k not in ("activations", "total")}


def test_gpu_target_reports_an_analytic_estimate(tmp_path):
  settings = ("  c.model.scan_layers, c.model.remat, c.model.dtype = True, 'full', 'bfloat16'\n"
              "  c.train.batch_size, c.train.seq_len = 8, 4096\n")
  run = lambda *a: _dry_run_llama3_8b(tmp_path, settings, *a)
  ok = run("--target=h100", "--target_devices=8")
  assert ok.returncode == 0 and "analytic estimate" in ok.stdout and "FITS" in ok.stdout, ok.stdout + ok.stderr
  small = run("--target=a100-40", "--target_devices=1", "--config.mesh.shape=(1,1,1)")
  assert small.returncode == 3 and "DOES NOT FIT" in small.stdout, small.stdout + small.stderr


# The shape of libtpu's optimized HLO for a windowed (collective-matmul) einsum inside the scan over
# layers: an async collective-permute in an 8-trip loop nested in a 32-trip loop, an all-gather in the
# outer body only. Trimmed from a real v5p:2x2x4 compile of Llama 3 8B.
_NESTED_LOOPS_HLO = """
%inner_cond (p.0: (u32[], bf16[4,8])) -> pred[] {
  %c.8 = u32[]{:T(128)} constant(8)
  %p.0 = (u32[]{:T(128)}, bf16[4,8]{1,0}) parameter(0)
  %i.0 = u32[]{:T(128)} get-tuple-element(%p.0), index=0
  ROOT %lt.0 = pred[]{:T(512)} compare(%i.0, %c.8), direction=LT
}

%inner_body (p.1: (u32[], bf16[4,8])) -> (u32[], bf16[4,8]) {
  %p.1 = (u32[]{:T(128)}, bf16[4,8]{1,0}) parameter(0)
  %x.1 = bf16[4,8]{1,0:T(8,128)(2,1)} get-tuple-element(%p.1), index=1
  %collective-permute-start.4 = (bf16[4,8]{1,0:T(8,128)(2,1)}, bf16[4,8]{1,0:T(8,128)(2,1)}, u32[]{:S(2)}, u32[]{:S(2)}) collective-permute-start(%x.1), channel_id=15, source_target_pairs={{0,1},{1,0}}
  %collective-permute-done.4 = bf16[4,8]{1,0:T(8,128)(2,1)} collective-permute-done(%collective-permute-start.4)
  %i.1 = u32[]{:T(128)} get-tuple-element(%p.1), index=0
  ROOT %t.1 = (u32[]{:T(128)}, bf16[4,8]{1,0}) tuple(%i.1, %collective-permute-done.4)
}

%outer_cond (p.2: (s32[], bf16[4,8])) -> pred[] {
  %c.32 = s32[]{:T(128)} constant(32)
  %p.2 = (s32[]{:T(128)}, bf16[4,8]{1,0}) parameter(0)
  %i.2 = s32[]{:T(128)} get-tuple-element(%p.2), index=0
  ROOT %lt.2 = pred[]{:T(512)} compare(%i.2, %c.32), direction=LT
}

%outer_body (p.3: (s32[], bf16[4,8])) -> (s32[], bf16[4,8]) {
  %p.3 = (s32[]{:T(128)}, bf16[4,8]{1,0}) parameter(0)
  %x.3 = bf16[4,8]{1,0} get-tuple-element(%p.3), index=1
  %all-gather.1 = bf16[8,8]{1,0} all-gather(%x.3), channel_id=3, replica_groups={{0,1}}, dimensions={0}
  %w.3 = (u32[]{:T(128)}, bf16[4,8]{1,0}) while(%tuple.9), condition=%inner_cond, body=%inner_body
  %i.3 = s32[]{:T(128)} get-tuple-element(%p.3), index=0
  ROOT %t.3 = (s32[]{:T(128)}, bf16[4,8]{1,0}) tuple(%i.3, %x.3)
}

ENTRY %main (a: bf16[4,8]) -> bf16[4,8] {
  %a = bf16[4,8]{1,0} parameter(0)
  %w.4 = (s32[]{:T(128)}, bf16[4,8]{1,0}) while(%tuple.10), condition=%outer_cond, body=%outer_body
  ROOT %all-reduce.5 = bf16[4,8]{1,0} all-reduce(%a), channel_id=5, replica_groups={{0,1}}, to_apply=%add
}
"""


def test_collectives_count_nested_loop_trips():
  """Per step = instructions x the product of the enclosing loops' bounds; bytes = each result's size
  (the async permute's result half of its tuple) times that count."""
  from research.plan.collectives import collectives_summary
  s = collectives_summary(_NESTED_LOOPS_HLO)
  assert s["collective-permute"] == {"instructions": 1, "per_step": 32 * 8, "bytes_per_step": 32 * 8 * 4 * 8 * 2}
  assert s["all-gather"] == {"instructions": 1, "per_step": 32, "bytes_per_step": 32 * 8 * 8 * 2}
  assert s["all-reduce"] == {"instructions": 1, "per_step": 1, "bytes_per_step": 4 * 8 * 2}


@pytest.mark.parametrize("variant", ["gpt2-124m", "llama-1b"])
def test_gpu_bench_configs_fit_one_h100_and_need_a_gpu(variant):
  from research.config.cli import load_experiment
  cfg = load_experiment(os.path.join(ROOT, "experiments", f"gpu_bench.py:{variant}"))
  cfg.mesh.shape = (1, 1, 1)
  assert cfg.model.attention_impl == "cudnn" and cfg.model.dtype == "bfloat16"
  report = plan_for_target(cfg, "h100", gpus=1)   # validated as for a GPU: cuDNN attention is allowed
  assert report["fits"], format_report(report)
  cfg.mesh.shape = (-1, 1, 1)
  with pytest.raises(PlanError, match="attention_impl=cudnn needs a GPU, this run is on tpu"):
    plan_for_target(cfg, "v5e:2x2")

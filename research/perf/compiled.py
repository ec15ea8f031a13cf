"""What a compiled step costs per device: memory (from the compiler's memory analysis, split into
parameters / optimizer state / batch by the arrays' shardings) and the compiler's FLOP estimate."""
from __future__ import annotations

import math

import jax

GIB = 1024**3


def bytes_per_device(tree) -> int:
  """Bytes one device holds of the (abstract or real) sharded arrays in `tree` (its largest shard)."""
  total = 0
  for leaf in jax.tree.leaves(tree):
    sharding = getattr(leaf, "sharding", None)
    shape = sharding.shard_shape(leaf.shape) if sharding is not None else leaf.shape
    total += math.prod(shape) * jax.numpy.dtype(leaf.dtype).itemsize
  return total


def memory_report(compiled, abstract_state, abstract_batch) -> dict:
  """Per-device bytes. `total` = arguments + outputs - aliased (donated state buffers reused for the
  new state) + temporaries + generated code: what must fit in the device's memory."""
  report = {"params": bytes_per_device(abstract_state.params),
            "optimizer_state": bytes_per_device(abstract_state.opt_state),
            "batch": bytes_per_device(abstract_batch)}
  m = compiled.memory_analysis()
  if m is None:  # some backends do not report it
    return report
  report.update(arguments=int(m.argument_size_in_bytes), outputs=int(m.output_size_in_bytes),
                aliased=int(m.alias_size_in_bytes), temporaries=int(m.temp_size_in_bytes),
                generated_code=int(m.generated_code_size_in_bytes))
  report["total"] = (report["arguments"] + report["outputs"] - report["aliased"] + report["temporaries"]
                     + report["generated_code"])
  return report


def compiler_flops(compiled) -> float | None:
  """The compiler's FLOP count for one call, per device (XLA counts a loop body such as a scan over
  layers once, not once per iteration, so scanned models read low)."""
  try:
    cost = compiled.cost_analysis()
  except Exception:  # noqa: BLE001 - not every backend implements it
    return None
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else None
  return float(cost["flops"]) if cost and "flops" in cost else None


def format_bytes(n: int) -> str:
  for unit, size in (("GiB", GIB), ("MiB", 1024**2), ("KiB", 1024)):
    if n >= size:
      return f"{n / size:.2f} {unit}"
  return f"{n} B"


def format_memory(report: dict) -> str:
  """One line per group, for the log and --dry_run."""
  f = format_bytes
  lines = [f"memory per device: parameters {f(report['params'])}, optimizer state "
           f"{f(report['optimizer_state'])}, batch {f(report['batch'])}"]
  if "total" in report:
    lines.append(f"  compiled step: arguments {f(report['arguments'])} + outputs {f(report['outputs'])} "
                 f"- aliased (donated) {f(report['aliased'])} + temporaries {f(report['temporaries'])} "
                 f"+ generated code {f(report['generated_code'])} = total {f(report['total'])}")
  else:
    lines.append("  compiled step: this backend gives no memory analysis")
  return "\n".join(lines)

"""Collectives in a compiled step's optimized HLO text (`compiled.as_text()`): kind, count per step and
bytes. Bytes are each collective's result size per device (for a gather: the gathered tensor), a
proxy for traffic, not link bytes. Collectives inside a while loop (the scan over layers) count once
per iteration: the trip count is read from the loop's condition.

libtpu writes many gathers as all-reduce of a zero-padded buffer (dynamic-update-slice before) and
reduce-scatters as all-reduce then dynamic-slice; those are reported as what they do.
"""
from __future__ import annotations

import collections
import math
import re

DTYPE_BYTES = {"pred": 1, "s4": 0.5, "u4": 0.5, "s8": 1, "u8": 1, "f8e4m3fn": 1, "f8e5m2": 1,
               "f8e4m3b11fnuz": 1, "f8e4m3fnuz": 1, "f8e5m2fnuz": 1, "s16": 2, "u16": 2,
               "f16": 2, "bf16": 2, "s32": 4, "u32": 4, "f32": 4, "s64": 8, "u64": 8, "f64": 8,
               "c64": 8, "c128": 16}
KINDS = ("all-gather", "reduce-scatter", "all-reduce", "all-to-all", "collective-permute",
         "ragged-all-to-all", "collective-broadcast")
# "%name = SHAPE opcode(" for a collective or its async "-start" form (the "-done" is skipped so each
# op counts once); SHAPE is an array or a tuple of arrays, with TPU layouts like {1,0:T(8,128)(2,1)}.
_INSTR = re.compile(r"^\s*(?:ROOT\s+)?%?(?P<name>[\w.\-]+)\s*=\s*(?P<shape>.+?)\s+"
                    r"(?P<op>" + "|".join(sorted(KINDS, key=len, reverse=True)) + r")(?P<start>-start)?\(")
_ARRAY = re.compile(r"\b(" + "|".join(DTYPE_BYTES) + r")\[([\d,]*)\]")
_DEF = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(.*)$")
_COMP = re.compile(r"^(?:ENTRY )?%?([\w.\-]+) \(.*\{\s*$")     # "%fused_computation.3 (param_0: ...) -> ... {"


def _arrays_bytes(arrays) -> int:
  return int(sum(DTYPE_BYTES[dt] * math.prod(int(d) for d in dims.split(",") if d) for dt, dims in arrays))


def shape_bytes(shape_text: str) -> int:
  """Bytes of all arrays in an HLO shape string such as "(bf16[8,128]{1,0:T(8,128)}, f32[])"."""
  return _arrays_bytes(_ARRAY.findall(shape_text))


def _index(hlo_text):
  """name -> instruction text; computation name -> body text; name -> names of its users."""
  defs, comps, users, comp, body = {}, {}, collections.defaultdict(list), None, []
  for line in hlo_text.splitlines():
    c = _COMP.match(line)
    if c:
      comp, body = c.group(1), []
      continue
    if line.strip() == "}" and comp:
      comps[comp], comp = "\n".join(body), None
      continue
    body.append(line)
    d = _DEF.match(line)
    if d:
      defs[d.group(1)] = d.group(2)
      for op in re.findall(r"%([\w.\-]+)", d.group(2).split(", metadata=")[0]):
        users[op].append(d.group(1))
  return defs, comps, users


def _does(name, opcode, defs, comps) -> bool:
  """Whether instruction `name` is, or is a fusion whose computation contains, `opcode`."""
  text = defs.get(name, "")
  if re.search(r"\s" + opcode + r"\(", text):
    return True
  called = re.search(r"calls=%([\w.\-]+)", text)
  return bool(called and re.search(r"\s" + opcode + r"\(", comps.get(called.group(1), "")))


def _trip_counts(hlo_text: str, comps: dict) -> dict:
  """computation -> how often one step runs it: while bodies get the loop bound found in their
  condition ("compare(i, constant(N)), direction=LT", as lax.scan/fori_loop lower), nested loops
  multiply. Computations not reached through a while count 1."""
  parent, bound, comp = {}, {}, None
  for line in hlo_text.splitlines():
    c = _COMP.match(line)
    if c:
      comp = c.group(1)
    w = re.search(r"\swhile\(.*?condition=%([\w.\-]+), body=%([\w.\-]+)", line)
    if w and comp:
      cond, body = w.groups()
      parent[body] = comp
      n = re.search(r"constant\((\d+)\)", comps.get(cond, ""))
      bound[body] = int(n.group(1)) if n and "direction=LT" in comps.get(cond, "") else 1
  def count(c, seen=()):
    return bound[c] * count(parent[c], seen + (c,)) if c in bound and c not in seen else 1
  return {c: count(c) for c in comps}


def find_collectives(hlo_text: str) -> list[dict]:
  """One dict per collective: op, name, bytes (its result, per device), replica_groups, and 'as',
  the op it stands for (libtpu writes gathers as all-reduce(dynamic-update-slice into zeros) and
  reduce-scatters as all-reduce followed by dynamic-slice)."""
  defs, comps, users = _index(hlo_text)
  trips = _trip_counts(hlo_text, comps)
  out, comp = [], None
  for line in hlo_text.splitlines():
    c = _COMP.match(line)
    if c:
      comp = c.group(1)
    m = _INSTR.match(line)
    if not m:
      continue
    arrays = [a for a in _ARRAY.findall(m["shape"])]
    if m["start"] and m["shape"].startswith("(") and len(arrays) > 1:
      arrays = [a for a in arrays if a[1]]          # async tuple: (operands..., results..., scalars)
      arrays = arrays[len(arrays) // 2:]
    groups = re.search(r"replica_groups=(\S+(?: \{[^}]*\})?)", line)
    operands = re.findall(r"%([\w.\-]+)", line[m.end():].split(")", 1)[0])
    kind = m["op"]
    if kind == "all-reduce":
      if operands and all(_does(o, "dynamic-update-slice", defs, comps) for o in operands):
        kind = "all-gather (as all-reduce)"
      elif users[m["name"]] and all(_does(u, "dynamic-slice", defs, comps) for u in users[m["name"]]):
        kind = "reduce-scatter (as all-reduce)"
    out.append({"op": m["op"], "as": kind, "name": m["name"], "bytes": _arrays_bytes(arrays),
                "async": bool(m["start"]), "computation": comp,
                "times": trips.get(comp, 1), "replica_groups": groups.group(1).rstrip(",") if groups else None})
  return out


def collectives_summary(hlo_text: str) -> dict:
  """{kind: {'instructions', 'per_step', 'bytes_per_step'}}: per step, each result's bytes times its
  loop's trip count."""
  by: dict = {}
  for c in find_collectives(hlo_text):
    row = by.setdefault(c["as"], {"instructions": 0, "per_step": 0, "bytes_per_step": 0})
    row["instructions"] += 1
    row["per_step"] += c["times"]
    row["bytes_per_step"] += c["bytes"] * c["times"]
  return dict(sorted(by.items()))

"""safetensors files read and written with numpy alone (no torch, bfloat16 through ml_dtypes).

The format: 8 bytes (little-endian u64) giving the header's length, a JSON header
{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {str: str}}, then the
tensors' bytes, little-endian and row-major. A model is one `model.safetensors` or shards listed in
`model.safetensors.index.json` ({"weight_map": {name: file}}). Reading maps each tensor from disk
(np.memmap) only when it is asked for, so a converted model never needs two copies in memory.
"""
from __future__ import annotations

import json
import os
import re
import struct

import ml_dtypes
import numpy as np

from research.hf.errors import HFConvertError

SINGLE, INDEX = "model.safetensors", "model.safetensors.index.json"
DTYPES = {"F64": np.dtype("<f8"), "F32": np.dtype("<f4"), "F16": np.dtype("<f2"),
          "BF16": np.dtype(ml_dtypes.bfloat16), "I64": np.dtype("<i8"), "I32": np.dtype("<i4"),
          "I16": np.dtype("<i2"), "I8": np.dtype("i1"), "U8": np.dtype("u1"), "BOOL": np.dtype("?"),
          "F8_E4M3": np.dtype(ml_dtypes.float8_e4m3fn), "F8_E5M2": np.dtype(ml_dtypes.float8_e5m2)}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}
FLOATS = ("F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2")
_HEADER_LIMIT = 100 << 20   # safetensors' own limit on the header's size


def read_header(path: str) -> tuple[dict, int]:
  """(header without __metadata__, offset of the data) of one file; HFConvertError naming the file
  when it is not safetensors."""
  size = os.path.getsize(path)
  with open(path, "rb") as f:
    raw = f.read(8)
    n = struct.unpack("<Q", raw)[0] if len(raw) == 8 else -1
    if not 0 < n <= min(_HEADER_LIMIT, size - 8):
      raise HFConvertError(f"{path}: not a safetensors file (header length {n}, file size {size})")
    try:
      header = json.loads(f.read(n))
    except ValueError as e:
      raise HFConvertError(f"{path}: not a safetensors file (header is not JSON: {e})") from None
  header.pop("__metadata__", None)
  for name, entry in header.items():
    if entry.get("dtype") not in DTYPES:
      raise HFConvertError(f"{path}: tensor {name} has dtype {entry.get('dtype')!r}; readable: "
                           f"{', '.join(DTYPES)}")
    begin, end = entry["data_offsets"]
    want = int(np.prod(entry["shape"], dtype=np.int64)) * DTYPES[entry["dtype"]].itemsize
    if end - begin != want or not 0 <= begin <= end <= size - 8 - n:
      raise HFConvertError(f"{path}: tensor {name} ({entry['dtype']} {tuple(entry['shape'])}) has data "
                           f"offsets {begin}..{end} that do not fit its shape or the file; the file is damaged")
  return header, 8 + n


class TensorFiles:
  """The tensors of a model directory by name, read on demand: `shape(name)`, `get(name)`.

  `where(name)` is the file that holds it (or would: the index or model.safetensors), for errors."""

  def __init__(self, directory: str):
    self.directory = directory
    index = os.path.join(directory, INDEX)
    single = os.path.join(directory, SINGLE)
    self.entries: dict[str, tuple[str, dict, int]] = {}
    if os.path.isfile(index):
      self.listing = index
      try:
        with open(index) as f:
          weight_map = json.load(f)["weight_map"]
      except (ValueError, KeyError, TypeError) as e:
        raise HFConvertError(f"{index}: not a safetensors index ({type(e).__name__}: {e}); it needs "
                             '{"weight_map": {tensor: file}}') from None
      for file in sorted(set(weight_map.values())):
        path = os.path.join(directory, file)
        if not os.path.isfile(path):
          first = next(k for k, v in weight_map.items() if v == file)
          raise HFConvertError(f"{index}: lists {file} (for tensor {first} and others), which is not in {directory}")
        header, offset = read_header(path)
        for name in (k for k, v in weight_map.items() if v == file):
          if name not in header:
            raise HFConvertError(f"{index}: lists tensor {name} in {file}, which does not hold it")
          self.entries[name] = (path, header[name], offset)
    elif os.path.isfile(single):
      self.listing = single
      header, offset = read_header(single)
      self.entries = {name: (single, entry, offset) for name, entry in header.items()}
    else:
      raise HFConvertError(f"{directory}: no {SINGLE} or {INDEX}; found {_listing(directory)}")

  def __contains__(self, name: str) -> bool:
    return name in self.entries

  def names(self) -> list[str]:
    return list(self.entries)

  def where(self, name: str) -> str:
    return self.entries[name][0] if name in self.entries else self.listing

  def dtype_name(self, name: str) -> str:
    return self.entries[name][1]["dtype"]

  def shape(self, name: str) -> tuple[int, ...]:
    return tuple(self.entries[name][1]["shape"])

  def get(self, name: str) -> np.ndarray:
    path, entry, offset = self.entries[name]
    dtype, shape = DTYPES[entry["dtype"]], tuple(entry["shape"])
    begin, end = entry["data_offsets"]
    if end == begin:
      return np.zeros(shape, dtype)
    return np.memmap(path, dtype=dtype, mode="r", offset=offset + begin, shape=shape)


def _listing(directory: str) -> str:
  files = sorted(os.listdir(directory)) if os.path.isdir(directory) else []
  return ", ".join(files[:12]) + (", ..." if len(files) > 12 else "") if files else "nothing"


def model_files(directory: str) -> list[str]:
  """The safetensors model files (single, index, shards) already in `directory`."""
  names = sorted(os.listdir(directory)) if os.path.isdir(directory) else []
  return [n for n in names if n in (SINGLE, INDEX) or re.fullmatch(r"model-\d{5}-of-\d{5}\.safetensors", n)]


def parse_size(size: int | str) -> int:
  """Bytes from an int or a string like '10MB' (10^6), '5GB', '500KiB' (2^10), as transformers reads
  max_shard_size."""
  if isinstance(size, int) and not isinstance(size, bool):
    value = size
  else:
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B|B)?\s*", str(size), re.IGNORECASE)
    if not match:
      raise HFConvertError(f"max_shard_size={size!r}: give bytes (an int) or a size like 500MB, 5GB, 2GiB")
    unit = (match.group(2) or "B").upper()
    power = " KMGT".index(unit[0]) if unit != "B" else 0
    value = int(float(match.group(1)) * ((1024 if "I" in unit else 1000) ** power))
  if value <= 0:
    raise HFConvertError(f"max_shard_size={size!r} must be > 0")
  return value


def write_file(path: str, tensors: dict[str, np.ndarray], metadata: dict[str, str]) -> None:
  """One .safetensors file of `tensors` (in their order), written to a temporary name and renamed."""
  header, offset = {}, 0
  for name, x in tensors.items():
    if x.dtype not in DTYPE_NAMES:
      raise HFConvertError(f"{path}: tensor {name} has dtype {x.dtype}, which safetensors cannot hold")
    header[name] = {"dtype": DTYPE_NAMES[x.dtype], "shape": list(x.shape),
                    "data_offsets": [offset, offset + x.nbytes]}
    offset += x.nbytes
  header["__metadata__"] = metadata
  raw = json.dumps(header, separators=(",", ":")).encode()
  raw += b" " * (-len(raw) % 8)   # the data starts 8-byte aligned
  tmp = path + ".tmp"
  with open(tmp, "wb") as f:
    f.write(struct.pack("<Q", len(raw)))
    f.write(raw)
    for x in tensors.values():
      f.write(np.ascontiguousarray(x).reshape(-1).view(np.uint8).data)   # little-endian hosts
  os.replace(tmp, path)


def write_model(directory: str, tensors: dict[str, np.ndarray], max_shard_size: int | str) -> list[str]:
  """Writes `tensors` (in their order) as model.safetensors, or, past max_shard_size, as
  model-0000i-of-0000n.safetensors shards plus model.safetensors.index.json. Returns the file names."""
  limit = parse_size(max_shard_size)
  shards: list[dict[str, np.ndarray]] = [{}]
  size = 0
  for name, x in tensors.items():
    if shards[-1] and size + x.nbytes > limit:
      shards.append({})
      size = 0
    shards[-1][name] = x
    size += x.nbytes
  metadata = {"format": "pt"}   # transformers loads only files that say so
  present = model_files(directory)
  if present:   # never overwrite a model: another one's shards beside these would confuse a reader
    raise HFConvertError(f"{directory}: already holds {present[0]}; give a new directory")
  os.makedirs(directory, exist_ok=True)
  if len(shards) == 1:
    write_file(os.path.join(directory, SINGLE), shards[0], metadata)
    return [SINGLE]
  names = [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
  weight_map = {}
  for file, shard in zip(names, shards):
    write_file(os.path.join(directory, file), shard, metadata)
    weight_map.update({name: file for name in shard})
  index = {"metadata": {"total_size": sum(x.nbytes for x in tensors.values())},
           "weight_map": dict(sorted(weight_map.items()))}
  with open(os.path.join(directory, INDEX), "w") as f:
    json.dump(index, f, indent=2)
  return names + [INDEX]

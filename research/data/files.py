"""The files of a local corpus: `data.path` -> files, and what identifies their contents.

Symbolic links are followed, each directory once (a link to an ancestor cannot loop) and each file
once: paths that resolve to the same file are one file, which keeps every name it was reached
under, so a link to a held-out file is held out too. Contents are identified by the SHA-256 of
their bytes: size and modification time survive an edit made with `cp -p`, `rsync -t` or `tar`.
A memo (JSON, in the cache directory) keeps each file's hash with its inode, size, mtime and ctime,
so an unchanged big corpus is not read again at every start; ctime cannot be set by those tools.
"""
from __future__ import annotations

import fnmatch
import glob
import hashlib
import json
import os

EXTENSIONS = (".txt", ".jsonl", ".csv")


def _walk(top: str) -> list[str]:
  """Files under `top` (hidden names skipped, as glob does), each directory visited once by its real path."""
  seen, stack, files = set(), [top], []
  while stack:
    directory = stack.pop()
    real = os.path.realpath(directory)
    if real in seen:
      continue
    seen.add(real)
    try:
      entries = sorted(os.scandir(directory), key=lambda e: e.name)
    except OSError:  # unreadable, as glob skips it
      continue
    subdirectories = []
    for entry in entries:
      if entry.name.startswith("."):
        continue
      if entry.is_dir():  # follows links
        subdirectories.append(entry.path)
      elif entry.is_file():
        files.append(entry.path)
    stack.extend(reversed(subdirectories))
  return files


def _match(patterns: list[str], parts: list[str]) -> bool:
  """Path segments against glob segments, where '**' stands for any number of directories."""
  if not patterns:
    return not parts
  if patterns[0] == "**":
    return any(_match(patterns[1:], parts[i:]) for i in range(len(parts) + 1))
  return bool(parts) and fnmatch.fnmatchcase(parts[0], patterns[0]) and _match(patterns[1:], parts[1:])


def _recursive_glob(pattern: str) -> list[str]:
  """glob(pattern, recursive=True) without following a link loop 40 levels deep (and without the
  exponential blow-up of two such links)."""
  segments = os.path.normpath(pattern).split(os.sep)
  first_magic = next(i for i, s in enumerate(segments) if glob.has_magic(s))
  base = os.sep.join(segments[:first_magic]) or (os.sep if pattern.startswith(os.sep) else ".")
  return [os.path.normpath(f) for f in _walk(base)
          if _match(segments[first_magic:], os.path.relpath(f, base).split(os.sep))]


def dedupe(paths) -> dict[str, tuple[str, ...]]:
  """{path: every name it is reachable under}, one path per real file (the first in sorted order)."""
  by_real: dict[str, list[str]] = {}
  for p in sorted(paths):
    by_real.setdefault(os.path.realpath(p), []).append(p)
  return dict(sorted((ps[0], tuple(sorted({os.path.basename(p) for p in ps} | {os.path.basename(real)})))
                     for real, ps in by_real.items()))


def find_files(expanded: str) -> tuple[str, list[str]]:
  """('dir' | 'glob', paths) for a directory or a glob: a directory's .txt/.jsonl/.csv files, recursively."""
  if os.path.isdir(expanded):
    return "dir", [f for f in _walk(expanded) if f.endswith(EXTENSIONS)]
  if "**" in expanded:
    return "glob", _recursive_glob(expanded)
  return "glob", [f for f in glob.glob(expanded) if os.path.isfile(f)]


# ------------------------------------------------------------------------------ content hashes
def _identity(st: os.stat_result) -> list[int]:
  return [st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]


def _sha256(file: str) -> str:
  h = hashlib.sha256()
  with open(file, "rb") as f:
    while chunk := f.read(1 << 20):
      h.update(chunk)
  return h.hexdigest()


def _load_memo(memo_file: str | None) -> dict:
  if not memo_file or not os.path.isfile(memo_file):
    return {}
  try:
    with open(memo_file) as f:
      memo = json.load(f)
    return memo if isinstance(memo, dict) else {}
  except (OSError, ValueError):  # unreadable or half-written by hand: start again
    return {}


def _save_memo(memo_file: str, memo: dict) -> None:
  memo = {real: entry for real, entry in memo.items() if os.path.exists(real)}
  tmp = f"{memo_file}.tmp{os.getpid()}"
  try:
    os.makedirs(os.path.dirname(memo_file) or ".", exist_ok=True)
    with open(tmp, "w") as f:
      json.dump(memo, f)
    os.replace(tmp, memo_file)  # atomic: a concurrent reader sees the old memo or the new one
  except OSError:  # a read-only cache costs a re-hash next time, nothing else
    if os.path.exists(tmp):
      os.remove(tmp)


def file_digests(files, memo_file: str | None = None) -> tuple[str, ...]:
  """SHA-256 of each file's bytes; `memo_file` remembers them for files whose stat is unchanged."""
  memo, changed, digests = _load_memo(memo_file), False, []
  for file in files:
    real = os.path.realpath(file)
    before = _identity(os.stat(real))
    entry = memo.get(real)
    if isinstance(entry, list) and len(entry) == 5 and entry[:4] == before:
      digests.append(entry[4])
      continue
    digest = _sha256(real)
    digests.append(digest)
    if _identity(os.stat(real)) == before:  # not written to while we read it
      memo[real], changed = before + [digest], True
  if changed and memo_file:
    _save_memo(memo_file, memo)
  return tuple(digests)

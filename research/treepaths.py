"""Key paths of pytrees as readable strings, e.g. 'blocks/0/attn/q/kernel'.

One spelling for every kind of node (dict keys, sequence indices, dataclass and namedtuple
attributes), so paths from different sources (a live pytree, Orbax metadata) compare equal.
"""


def path_str(path) -> str:
  parts = []
  for key in path:
    for attr in ("key", "name", "idx"):
      if hasattr(key, attr):
        parts.append(str(getattr(key, attr)))
        break
  return "/".join(parts)

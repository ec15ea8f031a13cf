"""A sweep's Optuna storage from --storage: a journal file (a path, or journal:PATH; default
DIR/study.journal) on a filesystem every worker sees, or a database URL (postgresql://,
mysql+pymysql://, ... through SQLAlchemy). Plain SQLite is refused for workers on several machines:
its file locking fails under many writers and on network filesystems."""
from __future__ import annotations

import os

from research.config import ConfigError

JOURNAL_PREFIX = "journal:"
RDB_SCHEMES = ("postgresql", "mysql", "mariadb", "oracle", "mssql", "cockroachdb")


def open_storage(url: str | None, workdir: str, many_machines: bool):
  """The Optuna storage of `url` (None: DIR/study.journal)."""
  import optuna
  from optuna.storages import journal
  if not url:
    url = os.path.join(workdir, "study.journal")
  scheme = url.split("://", 1)[0].split("+", 1)[0].lower() if "://" in url else ""
  if scheme == "sqlite":
    if many_machines:
      raise ConfigError(f"--storage={url}: SQLite cannot coordinate workers on several machines (its file "
                        "locking fails under many writers and on network filesystems); use a journal file on "
                        "a shared filesystem (--storage=journal:/shared/DIR/study.journal) or PostgreSQL/MySQL "
                        "(--storage=postgresql://user:pass@host/db)")
    return optuna.storages.RDBStorage(url)
  if scheme in RDB_SCHEMES:
    try:
      return optuna.storages.RDBStorage(url, engine_kwargs={"pool_pre_ping": True})
    except ImportError as e:
      raise ConfigError(f"--storage={url}: the database driver is not installed ({e}); pip install "
                        "psycopg2-binary (PostgreSQL) or pymysql (MySQL, with mysql+pymysql://)") from None
    except Exception as e:  # noqa: BLE001 - SQLAlchemy's connection errors span many lines
      first = str(e).strip().splitlines()[0] if str(e).strip() else ""
      raise ConfigError(f"--storage={url}: cannot open the database ({type(e).__name__}: {first})") from None
  if scheme:
    raise ConfigError(f"--storage={url}: unknown scheme {scheme!r}; give a journal file path (journal:PATH) or "
                      f"a database URL ({', '.join(s + '://' for s in RDB_SCHEMES[:2])}, sqlite:// on one machine)")
  path = url[len(JOURNAL_PREFIX):] if url.startswith(JOURNAL_PREFIX) else url
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  # The open() lock works on NFS, where the default symlink lock may not.
  return journal.JournalStorage(journal.JournalFileBackend(path, lock_obj=journal.JournalFileOpenLock(path)))

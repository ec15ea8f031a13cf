"""Command-line parsing: --flagfile expansion and how override values are parsed."""
import pytest

from research.config import ConfigError, base_config, validate_config
from research.config.cli import apply_overrides, expand_flagfiles, split_argv


def test_flagfile_with_a_space_is_expanded(tmp_path):
  f = tmp_path / "flags.txt"
  f.write_text("# best layout\n--config.train.batch_size=64\n--workdir=runs/x\n")
  assert split_argv(["train.py", "--flagfile", str(f), "--dry_run"]) == (
      ["train.py", "--workdir=runs/x", "--dry_run"], ["--config.train.batch_size=64"])
  assert expand_flagfiles(["-flagfile", str(f)]) == expand_flagfiles([f"--flagfile={f}"])
  with pytest.raises(ConfigError, match="^--flagfile needs a file name: --flagfile=FILE$"):
    expand_flagfiles(["--flagfile"])


def test_flagfile_that_includes_itself_is_one_line(tmp_path):
  a, b = tmp_path / "a.txt", tmp_path / "b.txt"
  a.write_text(f"--config.seed=1\n--flagfile={b}\n")
  b.write_text(f"--flagfile={a}\n")
  with pytest.raises(ConfigError, match=f"^--flagfile={a} includes itself \\({a} -> {b} -> {a}\\)$"):
    expand_flagfiles([f"--flagfile={a}"])
  c = tmp_path / "c.txt"
  c.write_text(f"--flagfile={c}\n")
  with pytest.raises(ConfigError, match=f"^--flagfile={c} includes itself"):
    expand_flagfiles([f"--flagfile={c}"])
  # the same file twice, side by side, is not a cycle
  b.write_text("--config.seed=2\n")
  assert expand_flagfiles([f"--flagfile={b}", f"--flagfile={b}"]) == ["--config.seed=2"] * 2


@pytest.mark.parametrize("text, expect", [
    ("1,2", ("1", "2")), ("hamlet_gut.txt", ("hamlet_gut.txt",)), ("a.txt, b*.txt", ("a.txt", "b*.txt")),
    ("('a.txt', 'b.txt')", ("a.txt", "b.txt")), ("(1, 2)", ("1", "2")), ("", ()), ("()", ())])
def test_string_tuple_keys_parse_elements_as_strings(text, expect):
  cfg = apply_overrides(base_config(), [f"--config.data.val_files={text}"])
  assert cfg.data.val_files == expect


def test_no_decay_regexes_parse_and_validate():
  cfg = apply_overrides(base_config(), ["--config.optimizer.no_decay=(embed|pos_embed)/,/bias$"])
  assert cfg.optimizer.no_decay == ("(embed|pos_embed)/", "/bias$")
  cfg.data.path = "x.txt"
  validate_config(cfg, 8)
  cfg.optimizer.no_decay = ("(unclosed",)
  with pytest.raises(ConfigError, match=r"^optimizer.no_decay: '\(unclosed' is not a regular expression"):
    validate_config(cfg, 8)


def test_string_tuple_elements_are_validated():
  cfg = base_config()
  cfg.data.path = "x.txt"
  cfg.data.val_files = (1, 2)
  with pytest.raises(ConfigError, match=r"^data.val_files=\(1, 2\) must be a tuple of strings$"):
    validate_config(cfg, 8)

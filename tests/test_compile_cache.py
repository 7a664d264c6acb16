"""The persistent compilation cache (jcaffe.compile_cache): on by default for the command
line, off for the library unless asked; a second run loads its compiled step and trains
the same trajectory."""
import os
import re
import stat
import subprocess
import sys

import jax
import pytest

import jcaffe
from jcaffe import compile_cache
from test_cli import write_solver
from test_solver import DROPOUT_NET


@pytest.fixture
def jax_cache_settings():
    """Put JAX's cache settings back after a test that changes them."""
    before = (jax.config.jax_compilation_cache_dir, jax.config.jax_compilation_cache_max_size,
              jax.config.jax_persistent_cache_min_compile_time_secs)
    yield
    jax.config.update("jax_compilation_cache_dir", before[0])
    jax.config.update("jax_compilation_cache_max_size", before[1])
    jax.config.update("jax_persistent_cache_min_compile_time_secs", before[2])
    from jax.experimental.compilation_cache import compilation_cache as cc
    cc.reset_cache()


def run_cli(args, cwd, **env):
    full = {k: v for k, v in os.environ.items() if k != compile_cache.ENV}
    full.update(PYTHONPATH=os.pathsep.join(sys.path), CI="true",
                # cache every compile, however short, so this small net's step is written
                JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", **env)
    proc = subprocess.run([sys.executable, "-m", "jcaffe.cli"] + args, cwd=cwd, env=full,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return proc.stderr.splitlines()


def summary(lines):
    found = [l for l in lines if "compiled program(s) loaded" in l]
    assert len(found) == 1, lines
    loaded, written = re.search(r": (\d+) compiled program\(s\) loaded .*, (\d+) written",
                                found[0]).groups()
    return int(loaded), int(written)


def losses(lines):
    """(iteration, loss) of Caffe's display lines and the final one."""
    return [m.groups() for m in (re.search(r"\] Iteration (\d+)\b.*, loss = (\S+)", l)
                                 for l in lines) if m]


def test_command_line_reuses_its_compiled_step_across_runs(tmp_path):
    (tmp_path / "net.prototxt").write_text(DROPOUT_NET)
    (tmp_path / "out").mkdir()
    solver = write_solver(tmp_path / "solver.prototxt", max_iter=4, display=1)
    xdg = tmp_path / "xdg"
    where = str(xdg / "jcaffe" / "xla")

    first = run_cli(["train", "-solver", solver], tmp_path, XDG_CACHE_HOME=str(xdg))
    assert any("Compilation cache: %s" % where in l for l in first)
    loaded, written = summary(first)
    assert loaded == 0 and written >= 1
    assert any("] Compiled the training step (" in l for l in first)
    entries = [f for f in os.listdir(where) if f.startswith("jit_step-") and f.endswith("-cache")]
    assert len(entries) == 1
    assert stat.S_IMODE(os.stat(where).st_mode) == 0o700

    second = run_cli(["train", "-solver", solver], tmp_path, XDG_CACHE_HOME=str(xdg))
    loaded, written = summary(second)
    assert loaded >= 1 and written == 0
    assert any("] Loaded the training step (" in l and "from the compilation cache" in l
               for l in second)
    assert len(losses(first)) == 5 and losses(second) == losses(first)   # the same trajectory

    off = run_cli(["train", "-solver", solver, "-compilation_cache", "off"], tmp_path,
                  XDG_CACHE_HOME=str(tmp_path / "unused"))
    assert not any("Compilation cache" in l or "compiled program(s)" in l for l in off)
    assert losses(off) == losses(first)
    assert not (tmp_path / "unused").exists()


def test_command_line_flag_and_environment_choose_the_cache(tmp_path, monkeypatch,
                                                            jax_cache_settings):
    """What the command line's -compilation_cache and $JCAFFE_COMPILATION_CACHE choose, in
    this process (the runs above show a chosen cache written and loaded)."""
    from jcaffe import cli
    jax.config.update("jax_compilation_cache_dir", None)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv(compile_cache.ENV, "off")
    cli._use_compilation_cache({"compilation_cache": ""})           # the environment's off
    assert compile_cache.compilation_cache_dir() is None
    mine = tmp_path / "mine"                                         # the flag wins over it
    cli._use_compilation_cache({"compilation_cache": str(mine)})
    assert compile_cache.compilation_cache_dir() == str(mine) and mine.is_dir()
    monkeypatch.setenv(compile_cache.ENV, str(tmp_path / "env"))
    cli._use_compilation_cache({"compilation_cache": "off"})        # the flag's off wins
    assert compile_cache.compilation_cache_dir() is None
    monkeypatch.delenv(compile_cache.ENV)
    cli._use_compilation_cache({"compilation_cache": ""})           # neither: the default
    assert compile_cache.compilation_cache_dir() == str(tmp_path / "xdg" / "jcaffe" / "xla")
    assert not (tmp_path / "env").exists()


def test_library_leaves_jax_alone_unless_asked(tmp_path, monkeypatch, jax_cache_settings):
    jax.config.update("jax_compilation_cache_dir", None)
    monkeypatch.delenv(compile_cache.ENV, raising=False)
    assert compile_cache.from_environment() is None
    assert compile_cache.compilation_cache_dir() is None

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert jcaffe.set_compilation_cache() == str(tmp_path / "xdg" / "jcaffe" / "xla")
    assert jax.config.jax_compilation_cache_dir == str(tmp_path / "xdg" / "jcaffe" / "xla")
    assert jax.config.jax_compilation_cache_max_size == compile_cache.DEFAULT_MAX_BYTES
    assert jcaffe.set_compilation_cache("off") is None
    assert compile_cache.compilation_cache_dir() is None

    monkeypatch.setenv(compile_cache.ENV, str(tmp_path / "env"))
    assert compile_cache.from_environment() == str(tmp_path / "env")
    assert os.path.isdir(tmp_path / "env")


def test_programs_of_a_tenth_of_a_second_are_written_unless_jax_was_told_otherwise(
        tmp_path, monkeypatch, jax_cache_settings):
    """JAX writes only compiles of 1 s or more; jcaffe's cache lowers that to 0.1 s (a
    small net's step and forwards compile in 0.3-0.7 s), unless JAX's threshold was set."""
    monkeypatch.delenv("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", raising=False)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)   # JAX's default
    jcaffe.set_compilation_cache(str(tmp_path / "a"))
    assert jax.config.jax_persistent_cache_min_compile_time_secs == compile_cache.MIN_COMPILE_S
    assert compile_cache.MIN_COMPILE_S < 1.0

    jax.config.update("jax_persistent_cache_min_compile_time_secs", 5.0)   # the user's
    jcaffe.set_compilation_cache(str(tmp_path / "b"))
    assert jax.config.jax_persistent_cache_min_compile_time_secs == 5.0

    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
    monkeypatch.setenv("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "1")  # asked for 1 s
    jcaffe.set_compilation_cache(str(tmp_path / "c"))
    assert jax.config.jax_persistent_cache_min_compile_time_secs == 1.0


def test_command_line_keeps_a_cache_jax_was_given(tmp_path, monkeypatch, jax_cache_settings):
    monkeypatch.delenv(compile_cache.ENV, raising=False)
    jax.config.update("jax_compilation_cache_dir", str(tmp_path / "jax_own"))
    assert compile_cache.from_environment(default_on=True) == str(tmp_path / "jax_own")
    assert jax.config.jax_compilation_cache_dir == str(tmp_path / "jax_own")


def test_a_cache_directory_that_cannot_be_made_is_an_error_naming_it(tmp_path, monkeypatch,
                                                                     jax_cache_settings):
    from jcaffe import cli
    from netutil import LogLines
    (tmp_path / "net.prototxt").write_text(DROPOUT_NET)
    (tmp_path / "out").mkdir()
    (tmp_path / "a_file").write_text("not a directory")
    monkeypatch.chdir(tmp_path)
    solver = write_solver(tmp_path / "solver.prototxt", max_iter=1)
    bad = str(tmp_path / "a_file" / "xla")
    with LogLines() as lines:
        assert cli.main(["train", "-solver", solver, "-compilation_cache", bad]) == 1
    assert any("a_file" in l and "Error" in l for l in lines.lines), lines.lines
    assert compile_cache.compilation_cache_dir() is None    # nothing half set up

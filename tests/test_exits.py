"""The one exit-code table (gpcrun/exits.py) agrees with README.md, and every error names a member of it."""
from __future__ import annotations

import inspect
import os
import re
from pathlib import Path

import pytest

import gpcrun.errors as errors_mod
from gpcrun.cli.errors import exit_code_for
from gpcrun.errors import GpcrunError
from gpcrun.exits import Exit

README = Path(__file__).resolve().parents[1] / "README.md"


def _readme_table() -> dict[int, str]:
    text = README.read_text()
    section = text.split("## Exit codes", 1)[1].split("\n## ", 1)[0]
    return {int(m.group(1)): m.group(2).strip() for m in re.finditer(r"^\| (\d+) \| (.*) \|$", section, re.M)}


def test_readme_table_equals_the_enum():
    assert _readme_table() == {m.code: m.meaning for m in Exit}


def test_codes_and_kinds_are_unique():
    codes = [m.code for m in Exit]
    kinds = [m.kind for m in Exit if m.kind]
    assert len(codes) == len(set(codes)) and len(kinds) == len(set(kinds))
    assert Exit.for_kind("bench_failed").code == 15 and Exit.for_code(130) is Exit.INTERRUPTED


def test_every_error_class_maps_to_a_member():
    classes = [c for _, c in inspect.getmembers(errors_mod, inspect.isclass) if issubclass(c, GpcrunError)]
    from gpcrun.server_args import ServerArgsError
    classes.append(ServerArgsError)
    for c in classes:
        assert isinstance(c.exit, Exit), c
    assert exit_code_for(ServerArgsError("x")) == 2
    assert exit_code_for(errors_mod.ModelFileError("p", "no such file")) == 3
    assert exit_code_for(errors_mod.BatchLocked("held")) == 8
    assert exit_code_for(errors_mod.BenchError("bad")) == 15
    assert exit_code_for(ValueError("bug")) == 1
    import errno
    import sqlite3
    assert exit_code_for(OSError(errno.ENOSPC, "No space left on device", "/x/plan.json")) == 18
    assert exit_code_for(OSError(errno.EROFS, "Read-only file system")) == 18
    assert exit_code_for(sqlite3.OperationalError("database or disk is full")) == 18
    assert exit_code_for(OSError(errno.ECONNRESET, "reset")) == 1  # not a storage problem: still a bug


def test_non_finite_option_values_are_usage_errors():
    """nan compares false with every bound and inf overflows where it becomes an integer: both are exit 2 with
    one error line, never a traceback."""
    from click.testing import CliRunner

    from gpcrun.cli.main import main as cli_main
    for argv in (["plan", "--floor", "nan", "m.gguf"], ["plan", "--margin", "inf", "m.gguf"],
                 ["serve", "--grace", "nan", "m.gguf"], ["serve", "--ready-timeout", "inf", "m.gguf"],
                 ["bench", "--floor", "-inf", "m.gguf"]):
        r = CliRunner().invoke(cli_main, argv)
        assert r.exit_code == 2, (argv, r.output)
        assert "not a finite number" in r.output or "not in the range" in r.output, (argv, r.output)
        assert "Traceback" not in r.output


def test_a_negative_context_is_a_usage_error():
    """-c -1 would reach llama.cpp as a uint32 (4 billion tokens): refused before planning, exit 2, one line."""
    from click.testing import CliRunner

    from gpcrun.cli.main import main as cli_main
    for argv, env in ((["plan", "m.gguf", "--", "-c", "-1"], {}), (["plan", "m.gguf"], {"LLAMA_ARG_CTX_SIZE": "-8"})):
        r = CliRunner().invoke(cli_main, argv, env=env)
        assert r.exit_code == 2 and "expects a context size >= 0" in r.output, r.output


@pytest.mark.parametrize("disk", ["full", "read-only"])
def test_a_full_or_read_only_disk_is_exit_18_with_one_line(tmp_path, tiny_models, disk):
    """GPCRUN_HOME on a full filesystem (a 64 KiB tmpfs, filled) or a read-only one (a read-only bind mount): serve
    and receipt ls end with one line and exit 18, not an internal error. Needs mount(2) (root in this sandbox);
    skipped where it is not allowed."""
    import subprocess
    import sys
    mnt = tmp_path / "full"
    mnt.mkdir()
    if disk == "full":
        m = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)], capture_output=True,
                           text=True)
    else:
        (mnt / "home").mkdir()
        m = subprocess.run(["mount", "--bind", str(mnt), str(mnt)], capture_output=True, text=True)
        if m.returncode == 0:
            m = subprocess.run(["mount", "-o", "remount,bind,ro", str(mnt)], capture_output=True, text=True)
    if m.returncode != 0:
        subprocess.run(["umount", str(mnt)], capture_output=True)
        pytest.skip(f"cannot mount a {disk} filesystem here: {m.stderr.strip()[:100]}")
    try:
        if disk == "full":
            (mnt / "fill").write_bytes(b"\0" * (64 << 10))
        env = dict(os.environ, GPCRUN_HOME=str(mnt / "home"), GPCRUN_CALIBRATE="off")
        for args in (["serve", str(tiny_models["tiny-llama-q8_0"]), "--quiet", "--", "--port", "1", "-t", "1"],
                     ["receipt", "ls"]):
            r = subprocess.run([sys.executable, "-m", "gpcrun", *args], env=env, capture_output=True, text=True,
                               timeout=120)
            lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
            assert r.returncode == 18 and lines[-1].startswith("gpcrun: error: cannot write"), (args, r.stderr)
            assert "Traceback" not in r.stderr
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True)

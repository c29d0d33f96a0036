"""Secrets out of everything gpcrun writes: URL credentials recognised without being known, run documents
redacted and private (0600), appends and atomic writes that never follow a planted link."""
from __future__ import annotations

import json
import os
import stat

import pytest

from gpcrun.atomic import PRIVATE, open_private, write_text_atomic
from gpcrun.launch.run import new_run_dir, write_run_doc
from gpcrun.redact import redact_argv, redact_env, scrub


@pytest.mark.parametrize("text,want", [
    ("https://bob:s3cret@hub.example/x", "https://bob:<redacted>@hub.example/x"),
    ("see http://u:p%40ss@h:8080/a?b=1", "see http://u:<redacted>@h:8080/a?b=1"),
    ("https://h/m.gguf?token=abc123&x=1", "https://h/m.gguf?token=<redacted>&x=1"),
    ("https://h/m?X-Amz-Signature=deadbeef&api_key=k9", "https://h/m?X-Amz-Signature=<redacted>&api_key=<redacted>"),
    ("https://hub.example/plain/path", "https://hub.example/plain/path"),
    ("user@example.com and a=b", "user@example.com and a=b"),
    ("no secrets: 127.0.0.1:8080", "no secrets: 127.0.0.1:8080"),
])
def test_url_credentials(text, want):
    assert scrub(text) == want
    assert scrub({"k": [text]}) == {"k": [want]}


def test_argv_and_env_urls():
    assert redact_argv(["-mu", "https://me:pw@x/a.gguf", "--alias", "a"]) == ["-mu", "https://me:<redacted>@x/a.gguf",
                                                                             "--alias", "a"]
    env = redact_env({"HF_ENDPOINT": "https://me:pw@hub", "LLAMA_ARG_CTX_SIZE": "8", "HOME": "/root"})
    assert env == {"HF_ENDPOINT": "https://me:<redacted>@hub", "LLAMA_ARG_CTX_SIZE": "8"}


def test_run_documents_are_redacted_and_private(tmp_path):
    d = new_run_dir(tmp_path / "runs")
    assert stat.S_IMODE(d.stat().st_mode) == 0o700 and stat.S_IMODE((tmp_path / "runs").stat().st_mode) == 0o700
    doc = {"argv": ["llama-server", "--api-key", "k", "-m", "x"], "reason": "rejected: svc-token-4242 http://a:b@h/"}
    write_run_doc(d / "incident.json", doc, {"svc-token-4242"})
    text = (d / "incident.json").read_text()
    assert "svc-token-4242" not in text and '"k"' not in text and "a:b@" not in text
    assert json.loads(text)["argv"] == ["llama-server", "--api-key", "<redacted>", "-m", "x"]
    assert stat.S_IMODE((d / "incident.json").stat().st_mode) == PRIVATE


def test_no_write_follows_a_planted_link(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    out = tmp_path / "out"
    out.mkdir()
    (out / "events.jsonl").symlink_to(victim)
    with pytest.raises(OSError):
        open_private(out / "events.jsonl")
    (out / "summary.csv").symlink_to(victim)
    write_text_atomic(out / "summary.csv", "new")  # replaces the link itself
    assert victim.read_text() == "precious" and not (out / "summary.csv").is_symlink()
    assert (out / "summary.csv").read_text() == "new"
    with open_private(out / "new.log", "ab") as f:
        f.write(b"x")
    assert stat.S_IMODE((out / "new.log").stat().st_mode) == 0o600
    assert not [p for p in os.listdir(out) if p.endswith(".tmp")]

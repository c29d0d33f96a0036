"""A full or read-only disk under a batch (issue 13): the job it stopped is not counted as an attempt (said in the
state database, or in the lock file's own blocks when the database cannot be written), the exit is 18 with one
line, and `batch report` reads a result directory on a read-only filesystem. Real tmpfs and read-only bind
mounts where mount(2) is allowed (root in CI), else skipped."""
from __future__ import annotations

import errno
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from gpcrun.batch import BatchRunner, BatchState, collect, parse_jobs
from gpcrun.errors import StorageError

ROOT = Path(__file__).resolve().parents[1]
JOBS = "[[models]]\npath = 'a.gguf'\n[[models]]\npath = 'b.gguf'\n"


def _jobs(tmp_path):
    return parse_jobs(JOBS, tmp_path)[1]


def _ok(job, out):
    return {"ok": True, "receipt": None, "outcome": "clean_stop", "exit_code": 0, "summary": {"decode_tok_s": 9.5}}


def _state(out: Path) -> dict:
    st = BatchState(out)
    try:
        return {r["label"]: (r["state"], r["attempts"]) for r in st.all()}
    finally:
        st.close()


def test_a_full_disk_during_a_job_is_exit_18_and_the_attempt_is_not_counted(tmp_path):
    jobs = _jobs(tmp_path)
    out = tmp_path / "out"

    def full(job, out_dir):
        if job.index == 1:
            raise OSError(errno.ENOSPC, "No space left on device", str(out_dir / "receipts" / "r.json"))
        return _ok(job, out_dir)
    with pytest.raises(StorageError) as e:
        BatchRunner(jobs, out, full, echo=lambda m: None).run()
    assert e.value.exit.code == 18
    assert "job 1 (b.gguf) stopped: cannot write" in str(e.value) and "run the same command again" in str(e.value)
    assert _state(out) == {"a.gguf": ("done", 1), "b.gguf": ("pending", 0)}
    rows = BatchRunner(jobs, out, _ok, echo=lambda m: None).run()  # space again: it resumes with job 1
    assert [r["outcome"] for r in rows] == ["clean_stop", "clean_stop"]
    assert _state(out) == {"a.gguf": ("done", 1), "b.gguf": ("done", 1)}


def test_when_the_database_cannot_say_it_the_lock_file_does(tmp_path, monkeypatch):
    """Twice in a row the disk fills mid-job and not even the state database can be written: the job stays
    'running' there, the lock file's note says why, and the next run neither fails it nor counts the tries."""
    jobs = _jobs(tmp_path)
    out = tmp_path / "out"

    def full(job, out_dir):
        raise OSError(errno.ENOSPC, "No space left on device")

    def db_full(self, jid):
        raise sqlite3.OperationalError("database or disk is full")
    with monkeypatch.context() as m:
        m.setattr(BatchState, "mark_interrupted", db_full)
        for _ in range(3):
            with pytest.raises(StorageError):
                BatchRunner(jobs, out, full, echo=lambda m: None).run()
    assert b"storage-failed " in (out / "batch.lock").read_bytes()
    assert (out / "batch.lock").stat().st_size == 512  # written in place, never grown
    said = []
    rows = BatchRunner(jobs, out, _ok, echo=said.append).run()
    assert [r["outcome"] for r in rows] == ["clean_stop", "clean_stop"]
    assert any("stopped by a full or read-only disk: it runs again (not counted" in s for s in said)
    assert _state(out)["a.gguf"] == ("done", 1)
    assert b"storage-failed" not in (out / "batch.lock").read_bytes()


def test_a_job_that_kills_gpcrun_twice_is_still_failed(tmp_path):
    """The note forgives a storage failure only: a job left running without one is retried once, then failed."""
    jobs = _jobs(tmp_path)[:1]
    out = tmp_path / "out"
    st = BatchState(out)
    st.sync(jobs)
    st.mark_running(jobs[0].id)
    st.mark_running(jobs[0].id)
    st.close()
    rows = BatchRunner(jobs, out, _ok, echo=lambda m: None).run()
    assert rows[0]["outcome"] == "interrupted"


def _mount(*args: str) -> bool:
    return subprocess.run(["mount", *args], capture_output=True).returncode == 0


@pytest.fixture
def tmpfs(tmp_path):
    d = tmp_path / "small"
    d.mkdir()
    if not _mount("-t", "tmpfs", "-o", "size=1m", "tmpfs", str(d)):
        pytest.skip("cannot mount a tmpfs here (needs root)")
    yield d
    subprocess.run(["umount", "-l", str(d)], capture_output=True)


def test_a_real_full_tmpfs_mid_job_then_room_again(tmpfs, tmp_path):
    jobs = _jobs(tmp_path)
    out = tmpfs / "out"

    def fills_the_disk(job, out_dir):
        with open(out_dir / "filler", "wb") as f:  # a receipt, a log ... whatever filled it
            while True:
                f.write(b"\0" * 65536)
                f.flush()
    with pytest.raises(StorageError):
        BatchRunner(jobs, out, fills_the_disk, echo=lambda m: None).run()
    r = subprocess.run([sys.executable, "-m", "gpcrun", "batch", "report", str(out)], cwd=ROOT, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr  # readable while full
    (out / "filler").unlink()
    rows = BatchRunner(jobs, out, _ok, echo=lambda m: None).run()
    assert [r["outcome"] for r in rows] == ["clean_stop", "clean_stop"]
    assert _state(out)["a.gguf"] == ("done", 1)


def test_report_reads_a_result_directory_on_a_read_only_filesystem(tmp_path):
    jobs = _jobs(tmp_path)
    out = tmp_path / "out"
    BatchRunner(jobs, out, _ok, echo=lambda m: None).run()
    want = collect([out])
    ro = tmp_path / "ro"
    ro.mkdir()
    if not (_mount("--bind", str(out), str(ro)) and _mount("-o", "remount,bind,ro", str(ro))):
        subprocess.run(["umount", str(ro)], capture_output=True)
        pytest.skip("cannot make a read-only bind mount here (needs root)")
    try:
        before = sorted(p.name for p in ro.iterdir())
        assert collect([ro]) == want
        r = subprocess.run([sys.executable, "-m", "gpcrun", "batch", "report", "--json", str(ro)], cwd=ROOT,
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        assert "clean_stop" in r.stdout
        assert sorted(p.name for p in ro.iterdir()) == before
    finally:
        subprocess.run(["umount", str(ro)], capture_output=True)


@pytest.mark.parametrize("name", ["batch.lock", "state.sqlite", "state.sqlite-wal", "runs", "receipts"])
def test_links_planted_in_the_output_directory_are_refused(tmp_path, name):
    """Whoever can write the output directory must not make the batch user write through a link: the lock file,
    SQLite's files and the run/receipt directories are refused as links (exit 8), the victim untouched."""
    from gpcrun.errors import BatchOutputUnsafe
    victim = tmp_path / "victim"
    victim.mkdir() if name in ("runs", "receipts") else victim.write_bytes(b"precious\n")
    out = tmp_path / "out"
    out.mkdir()
    (out / name).symlink_to(victim)
    ran = []
    with pytest.raises(BatchOutputUnsafe) as e:
        BatchRunner(_jobs(tmp_path), out, lambda j, o: ran.append(j) or _ok(j, o), echo=lambda m: None).run()
    assert e.value.exit.code == 8 and f"{name} is a symbolic link" in str(e.value)
    assert not ran
    assert (list(victim.iterdir()) == []) if victim.is_dir() else victim.read_bytes() == b"precious\n"


def test_planted_summary_links_are_replaced_not_followed(tmp_path):
    victim = tmp_path / "victim.csv"
    victim.write_text("precious\n")
    out = tmp_path / "out"
    out.mkdir()
    for n in ("summary.csv", ".summary.csv.tmp", "summary.json"):
        (out / n).symlink_to(victim)
    BatchRunner(_jobs(tmp_path), out, _ok, echo=lambda m: None).run()
    assert victim.read_text() == "precious\n"
    assert not (out / "summary.csv").is_symlink() and "clean_stop" in (out / "summary.csv").read_text()


def test_a_job_files_secrets_stay_out_of_the_state_summaries_and_console(tmp_path):
    """server_args with --api-key (and a key=value URL credential): the job file is the one place the values
    live; state.sqlite, the summaries and the console show <redacted>."""
    jobs = parse_jobs("[batch]\nserver_args = ['--api-key', 'sk-planted-0042', '--hf-token', 'hf_PlantedToken999']\n"
                      "[[models]]\npath = 'a.gguf'\n", tmp_path)[1]
    out = tmp_path / "out"
    said = []
    BatchRunner(jobs, out, _ok, echo=said.append).run()
    for p in out.rglob("*"):
        if p.is_file():
            data = p.read_bytes()
            assert b"sk-planted-0042" not in data and b"hf_PlantedToken999" not in data, p
    assert not [s for s in said if "sk-planted" in s or "hf_Planted" in s]
    assert "--api-key <redacted>" in (out / "summary.csv").read_text()

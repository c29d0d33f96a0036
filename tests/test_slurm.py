"""The cluster paths of `gpcrun batch`, for real: a single-node Slurm on this machine (scripts/slurm_localhost.sh:
munged, slurmctld, slurmd as root, no systemd, no cgroups) runs scripts/examples/slurm_array.sbatch as a job
array of 2 tasks, each task picks its shard from SLURM_ARRAY_*, and a dependent job merges the shards with
`gpcrun batch report`. The Kubernetes example (scripts/examples/k8s-indexed-job.yaml) is run as its pods would
run it: its container args and env, JOB_COMPLETION_INDEX 0..N-1, then its report script.

Skipped, with the reason, where Slurm cannot start here (not root, apt-get cannot install slurm-wlm/munge, a
daemon fails: its log lines are in the reason). The daemons are stopped at the end; nothing is left running.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from gpcrun.batch import parse_jobs
from tests.proc_util import gone, wait_until

pytestmark = [pytest.mark.server, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "slurm_localhost.sh"
EXAMPLES = ROOT / "scripts" / "examples"
VENV_BIN = Path(sys.executable).parent
TERMINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED",
            "BOOT_FAIL", "DEADLINE"}






def clean_env(**extra: str) -> dict:
    """This process's environment without any Slurm/Indexed-Job variables (the test may run inside a job)."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SLURM_", "SBATCH_", "SQUEUE_", "JOB_COMPLETION_INDEX", "GPCRUN_SHARD_COUNT"))}
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"  # `gpcrun` in the job scripts: this venv's
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def profile_json(tmp_path_factory) -> Path:
    """The host profile measured once; every GPCRUN_HOME below starts with a copy (no concurrent measuring)."""
    home = tmp_path_factory.mktemp("profile-home")
    subprocess.run([sys.executable, "-m", "gpcrun", "profile", "--json"], cwd=ROOT, capture_output=True, check=True,
                   timeout=120, env=dict(os.environ, GPCRUN_HOME=str(home)))
    return home / "profile.json"


def new_home(path: Path, profile_json: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    shutil.copy(profile_json, path / "profile.json")
    return path


def models_dir(tiny_models: dict) -> str:
    dirs = {str(p.parent) for k, p in tiny_models.items() if k in ("tiny-llama-q8_0", "tiny-qwen3moe-q8_0")}
    assert len(dirs) == 1
    return dirs.pop()


# ------------------------------------------------------------------------------------------------ the cluster

def _daemon_pids(d: Path) -> dict[str, int]:
    out = {}
    for name in ("munged", "slurmctld", "slurmd"):
        f = d / "run" / f"{name}.pid"
        if f.exists() and f.read_text().strip().isdigit():
            out[name] = int(f.read_text().strip())
    return out


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    d = tmp_path_factory.mktemp("slurm")
    if not shutil.which("bash"):
        pytest.skip("no bash to run scripts/slurm_localhost.sh")
    t0 = time.monotonic()
    try:
        p = subprocess.run(["bash", str(SCRIPT), "start", str(d)], capture_output=True, text=True, timeout=900)
    except subprocess.TimeoutExpired as e:
        subprocess.run(["bash", str(SCRIPT), "stop", str(d)], capture_output=True, timeout=60)
        pytest.skip(f"scripts/slurm_localhost.sh start did not finish in 900 s: {(e.stderr or b'')[-800:]!r}")
    setup_s = time.monotonic() - t0
    if p.returncode != 0:
        subprocess.run(["bash", str(SCRIPT), "stop", str(d)], capture_output=True, timeout=60)
        tail = " | ".join(ln for ln in p.stderr.strip().splitlines()[-14:] if ln.strip())
        pytest.skip(f"single-node Slurm could not start (slurm_localhost.sh exit {p.returncode}): {tail}")
    conf = next(ln.split("=", 1)[1] for ln in p.stdout.splitlines() if ln.startswith("SLURM_CONF="))
    pids = _daemon_pids(d)
    assert set(pids) == {"munged", "slurmctld", "slurmd"}, (pids, p.stderr)
    installed = re.search(r"installed slurm-wlm and munge in (\d+) s", p.stderr)
    info = {"dir": d, "conf": conf, "setup_s": setup_s, "install_s": int(installed.group(1)) if installed else None,
            "stderr": p.stderr, "pids": pids}
    print(f"\nslurm: up in {setup_s:.1f} s" + (f" (apt-get install {info['install_s']} s)" if installed else
                                              " (slurm-wlm and munge already installed)"))
    yield info
    # finalizer: cancel whatever is left, stop the daemons, and check that nothing of the cluster is left
    env = clean_env(SLURM_CONF=conf)
    left = subprocess.run(["squeue", "-h", "-o", "%i"], env=env, capture_output=True, text=True, timeout=30)
    ids = left.stdout.split()
    if ids:
        subprocess.run(["scancel", *ids], env=env, capture_output=True, timeout=30)
    procs = set(pids.values())
    for pid in pids.values():
        try:
            procs.update(c.pid for c in psutil.Process(pid).children(recursive=True))
        except psutil.NoSuchProcess:
            pass
    stop = subprocess.run(["bash", str(SCRIPT), "stop", str(d)], capture_output=True, text=True, timeout=120)
    assert stop.returncode == 0, stop.stderr
    survivors = [pid for pid in procs if not wait_until(lambda p=pid: gone(p), 10)]
    assert not survivors, f"Slurm processes survived the stop: {survivors}"


def test_slurm_script_refuses_without_root_with_one_line(tmp_path):
    """The reason a test would be skipped on a machine without root: exit 3 and one line, nothing started."""
    if os.geteuid() != 0 or not shutil.which("setpriv"):
        pytest.skip("needs root and setpriv to run the script as another user")
    p = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "bash", str(SCRIPT), "start",
                        str(tmp_path / "c")], capture_output=True, text=True, timeout=60)
    assert p.returncode == 3 and p.stdout == ""
    assert p.stderr.strip() == "slurm_localhost: needs root (the daemons run as root here); uid is 65534"
    assert not (tmp_path / "c").exists()
    p = subprocess.run(["bash", str(SCRIPT), "restart", str(tmp_path / "c")], capture_output=True, text=True,
                       timeout=60)
    assert p.returncode == 2 and "usage:" in p.stderr


def squeue_states(env: dict, ids: str) -> dict[str, str]:
    q = subprocess.run(["squeue", "-h", "-t", "all", "-j", ids, "-o", "%i %T"], env=env, capture_output=True,
                       text=True, timeout=30)
    return dict(ln.split(None, 1) for ln in q.stdout.strip().splitlines() if ln.strip())


def test_slurm_array_runs_each_shard_and_a_dependent_job_merges_them(slurm, tmp_path, tiny_models,
                                                                     llama_server_bin, profile_json):
    work = tmp_path / "work"
    work.mkdir()
    out = work / "gpcrun-out"
    env = clean_env(SLURM_CONF=slurm["conf"], GPCRUN_HOME=str(new_home(tmp_path / "home", profile_json)),
                    GPCRUN_LLAMA_SERVER=str(llama_server_bin), GPCRUN_MODELS=models_dir(tiny_models),
                    JOBS=str(EXAMPLES / "jobs.toml"), OUT=str(out))
    _, jobs = parse_jobs((EXAMPLES / "jobs.toml").read_text(), EXAMPLES, env=env)
    assert len(jobs) == 8
    t0 = time.monotonic()
    sb = subprocess.run(["sbatch", "--parsable", f"--chdir={work}", f"--output={work}/gpcrun-batch-%A_%a.out",
                         str(EXAMPLES / "slurm_array.sbatch")], env=env, capture_output=True, text=True, timeout=60)
    assert sb.returncode == 0, sb.stderr
    jid = sb.stdout.strip().split(";")[0]
    rp = subprocess.run(["sbatch", "--parsable", f"--dependency=afterany:{jid}", "--job-name=gpcrun-report",
                         f"--chdir={work}", f"--output={work}/gpcrun-report.out", "--wrap",
                         f"gpcrun batch report {out}/shard-*-of-2 --json"],
                        env=env, capture_output=True, text=True, timeout=60)
    assert rp.returncode == 0, rp.stderr
    rid = rp.stdout.strip().split(";")[0]
    seen: dict[str, set[str]] = {}

    def all_ended():
        st = squeue_states(env, f"{jid},{rid}")
        for k, v in st.items():
            seen.setdefault(k, set()).add(v)
        return len(st) == 3 and all(v in TERMINAL for v in st.values()) and st
    final = wait_until(all_ended, 120, step_s=0.2)
    elapsed = time.monotonic() - t0
    listing = subprocess.run(["squeue", "-t", "all", "-j", f"{jid},{rid}", "-o", "%.10i %.14j %.10T %.8M %R"],
                             env=env, capture_output=True, text=True, timeout=30).stdout
    logs = "\n".join(f"--- {p.name}:\n{p.read_text(errors='replace')[-1500:]}" for p in sorted(work.glob("*.out")))
    assert final, f"the jobs did not all end in 120 s: {seen}\n{listing}\n{logs}"
    assert final == {f"{jid}_0": "COMPLETED", f"{jid}_1": "COMPLETED", rid: "COMPLETED"}, (final, listing, logs)
    # scontrol keeps finished jobs (MinJobAge): exit codes, array indices, dependency, node
    show = subprocess.run(["scontrol", "-o", "show", "job", jid], env=env, capture_output=True, text=True,
                          timeout=30).stdout.strip().splitlines()
    tasks = {re.search(r"ArrayTaskId=(\d+)", ln).group(1): ln for ln in show}
    assert sorted(tasks) == ["0", "1"], show
    for ln in tasks.values():
        assert "JobState=COMPLETED" in ln and "ExitCode=0:0" in ln and f"ArrayJobId={jid}" in ln, ln
    rep_show = subprocess.run(["scontrol", "-o", "show", "job", rid], env=env, capture_output=True, text=True,
                              timeout=30).stdout
    assert "JobState=COMPLETED" in rep_show and "ExitCode=0:0" in rep_show
    jobcomp = (slurm["dir"] / "log" / "jobcomp.log").read_text().strip().splitlines()
    ours = [ln for ln in jobcomp if re.search(rf"(^| )(ArrayJobId={jid}|JobId={rid}) ", ln)]
    assert len(ours) == 3 and all("JobState=COMPLETED" in ln and "ExitCode=0:0" in ln for ln in ours), jobcomp

    # each task ran its own shard, picked from SLURM_ARRAY_* (no --shard on the command line)
    for i in (0, 1):
        text = (work / f"gpcrun-batch-{jid}_{i}.out").read_text(errors="replace")
        assert f"array job {jid} task {i} (2 tasks)" in text, text
        assert f"4 job(s) (shard {i}/2 of 8) -> {out}/shard-{i}-of-2" in text, text
        summary = json.loads((out / f"shard-{i}-of-2" / "summary.json").read_text())
        assert [r["job"] for r in summary] == [j.index for j in jobs if j.index % 2 == i]
    assert sorted(p.name for p in out.iterdir()) == ["shard-0-of-2", "shard-1-of-2"]
    # the dependent job merged both shards into one table of every job, in the batch's order
    merged = json.loads((work / "gpcrun-report.out").read_text())
    assert [r["job"] for r in merged] == [f"shard-{j.index % 2}-of-2:{j.index}" for j in jobs]
    assert [(r["model"], r["config"]) for r in merged] == [(j.label, j.describe()) for j in jobs]
    assert all(r["outcome"] == "clean_stop" and r["verdict"] == "ship" and r["decode_tok_s"] > 0 for r in merged), \
        merged
    # and the same merge from here
    here = subprocess.run([sys.executable, "-m", "gpcrun", "batch", "report", str(out / "shard-0-of-2"),
                           str(out / "shard-1-of-2")], env=env, cwd=ROOT, capture_output=True, text=True,
                          timeout=60)
    assert here.returncode == 0 and len(here.stdout.strip().splitlines()) == 2 + 8
    print(f"\nslurm array {jid} (2 tasks) + report job {rid}: all COMPLETED {elapsed:.1f} s after sbatch\n"
          f"{listing}" + "\n".join(ours) + "\n" + here.stdout)


# ------------------------------------------------------------------------------------------------ Kubernetes

def test_k8s_indexed_job_example_as_its_pods_would_run_it(tmp_path, tiny_models, llama_server_bin, profile_json):
    """No cluster here: the manifest's container args and env, run once per completion index with the volumes
    mapped to directories, then the report Job's script: one table of all 8 jobs."""
    import yaml

    docs = list(yaml.safe_load_all((EXAMPLES / "k8s-indexed-job.yaml").read_text()))
    job = next(d for d in docs if d["kind"] == "Job" and d["metadata"]["name"] == "gpcrun-batch")
    report = next(d for d in docs if d["kind"] == "Job" and d["metadata"]["name"] == "gpcrun-batch-report")
    spec = job["spec"]
    assert spec["completionMode"] == "Indexed" and spec["template"]["spec"]["restartPolicy"] == "Never"
    n = spec["completions"]
    (c,) = spec["template"]["spec"]["containers"]
    env = {e["name"]: e["value"] for e in c["env"]}
    assert int(env["GPCRUN_SHARD_COUNT"]) == n == spec["parallelism"]
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    vols = {v["name"]: v for v in spec["template"]["spec"]["volumes"]}
    assert set(mounts) == set(vols)
    args = c["args"]
    assert args[0] == "batch" and "--out" in args
    jobs_file, out_dir = args[1], args[args.index("--out") + 1]
    assert jobs_file == f"{mounts['jobs']}/jobs.toml" and vols["jobs"]["configMap"]["name"] == "gpcrun-jobs"
    assert out_dir.startswith(mounts["out"] + "/") and vols["out"]["persistentVolumeClaim"]["claimName"]
    (rc,) = report["spec"]["template"]["spec"]["containers"]
    script = rc["command"][2]
    assert f"n={n}" in script and f"{out_dir}/shard-" in script
    assert {m["mountPath"] for m in rc["volumeMounts"]} == {mounts["out"]}

    # the pods, here: /out -> tmp/out, the ConfigMap -> the example file, the models volume -> the tiny models
    local_out = str(tmp_path / "vol-out")
    local = [a.replace(mounts["out"], local_out).replace(jobs_file, str(EXAMPLES / "jobs.toml")) for a in args]
    pods = []
    try:
        for i in range(n):
            e = clean_env(**{**env, "JOB_COMPLETION_INDEX": str(i), "GPCRUN_MODELS": models_dir(tiny_models),
                             "GPCRUN_HOME": str(new_home(tmp_path / f"home-{i}", profile_json)),
                             "GPCRUN_LLAMA_SERVER": str(llama_server_bin)})
            pods.append(subprocess.Popen([sys.executable, "-m", "gpcrun", *local], env=e, cwd=tmp_path,
                                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
        results = [p.communicate(timeout=120) for p in pods]
    finally:
        for p in pods:
            if p.poll() is None:
                p.kill()
                p.wait(10)
    for i, (p, (_so, se)) in enumerate(zip(pods, results)):
        assert p.returncode == 0, se
        assert f"(shard {i}/{n} of 8) -> {local_out}" in se
    rep = subprocess.run(["sh", "-c", script.replace(mounts["out"], local_out)], env=clean_env(), cwd=tmp_path,
                         capture_output=True, text=True, timeout=60)
    assert rep.returncode == 0, rep.stderr
    lines = rep.stdout.strip().splitlines()
    assert lines[0].startswith("| job | model |") and len(lines) == 2 + 8
    assert all(ln.rstrip(" |").endswith("clean_stop") for ln in lines[2:]), lines

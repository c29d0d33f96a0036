#!/usr/bin/env bash
# A throw-away single-node Slurm cluster on this machine, for tests/test_slurm.py and for trying
# scripts/examples/slurm_array.sbatch by hand. Needs root (daemons run as root); no systemd needed.
#
#   scripts/slurm_localhost.sh start DIR   install slurm-wlm + munge with apt-get if missing, write DIR/slurm.conf
#                                          (this node's real CPUs/memory from `slurmd -C`), start munged, slurmctld
#                                          and slurmd (state, spool, logs, sockets all under DIR), wait until the
#                                          node is idle; prints SLURM_CONF=DIR/slurm.conf on stdout
#   scripts/slurm_localhost.sh stop DIR    stop the daemons that `start DIR` started (their pid files), wait
#
# Then: export SLURM_CONF=DIR/slurm.conf; sbatch/squeue/scontrol/sinfo talk to this cluster only.
# Exit codes: 2 usage, 3 not root, 4 could not install, 5 a daemon did not start or the node never became idle
# (the daemons' last log lines are printed on stderr), 0 otherwise. Messages: one "slurm_localhost: ..." line
# each on stderr. There is no accounting database: sacct is not available; `scontrol show job` (MinJobAge 600 s)
# and DIR/log/jobcomp.log (jobcomp/filetxt) record finished jobs.
set -euo pipefail

say() { echo "slurm_localhost: $*" >&2; }
die() { local code=$1; shift; say "$*"; exit "$code"; }

[ $# -eq 2 ] || die 2 "usage: $0 start|stop DIR"
cmd=$1
if [ "$cmd" = start ] && [ "$(id -u)" -ne 0 ]; then
  die 3 "needs root (the daemons run as root here); uid is $(id -u)"
fi
dir=$(mkdir -p "$2" && cd "$2" && pwd) || die 2 "cannot use $2 as the cluster's directory"

pid_alive() {  # a zombie (pid 1 in containers may not reap) counts as gone
  local pid=$1
  [ -r "/proc/$pid/stat" ] || return 1
  local state
  state=$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null) || return 1
  [ "$state" != "Z" ]
}

stop_one() {  # NAME PIDFILE: TERM, wait up to 10 s, KILL; only a pid whose command is NAME
  local name=$1 pidfile=$2 pid i
  [ -s "$pidfile" ] || return 0
  pid=$(tr -dc '0-9' < "$pidfile")
  [ -n "$pid" ] || return 0
  if ! pid_alive "$pid" || [ "$(cat "/proc/$pid/comm" 2>/dev/null)" != "$name" ]; then
    rm -f "$pidfile"
    return 0
  fi
  kill -TERM "$pid" 2>/dev/null || true
  for i in $(seq 100); do
    pid_alive "$pid" || break
    sleep 0.1
  done
  if pid_alive "$pid"; then
    say "$name (pid $pid) ignored SIGTERM for 10 s: SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$pidfile"
}

do_stop() {
  stop_one slurmd "$dir/run/slurmd.pid"
  stop_one slurmctld "$dir/run/slurmctld.pid"
  stop_one munged "$dir/run/munged.pid"
}

logs() {  # the daemons' last lines, for the reason a start failed
  local f
  for f in "$dir"/log/munged.log "$dir"/log/slurmctld.log "$dir"/log/slurmd.log; do
    [ -s "$f" ] && { echo "--- $(basename "$f"):"; tail -n 15 "$f"; }
  done
  return 0
}

fail_start() {
  local msg=$1
  logs >&2
  do_stop
  die 5 "$msg"
}

free_port() {
  local p
  for p in $(shuf -i 20000-60000 -n 50); do
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
      echo "$p"
      return 0
    fi
  done
  die 5 "no free TCP port found"
}

do_start() {
  if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v sbatch >/dev/null \
      || ! command -v munged >/dev/null; then
    command -v apt-get >/dev/null || die 4 "slurm-wlm/munge are not installed and there is no apt-get"
    local t0=$SECONDS
    say "installing slurm-wlm and munge with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get install -y --no-install-recommends slurm-wlm munge >"$dir/apt.log" 2>&1; then
      apt-get update >>"$dir/apt.log" 2>&1 || true
      apt-get install -y --no-install-recommends slurm-wlm munge >>"$dir/apt.log" 2>&1 \
        || die 4 "apt-get install slurm-wlm munge failed: $(tail -n 3 "$dir/apt.log" | tr '\n' ' ')"
    fi
    say "installed slurm-wlm and munge in $((SECONDS - t0)) s"
  fi
  local host
  host=$(hostname -s)
  mkdir -p "$dir"/{etc,state,spool,log,run,munge}
  chmod 700 "$dir/munge"
  do_stop  # a start over an earlier one in the same DIR

  # munge: our own key, socket and files (the system's /etc/munge and /run/munge are left alone)
  if [ ! -s "$dir/munge/munge.key" ]; then
    dd if=/dev/urandom of="$dir/munge/munge.key" bs=1024 count=1 status=none
    chmod 400 "$dir/munge/munge.key"
  fi
  local sock="$dir/run/munge.socket"  # in a directory everyone may traverse: clients of any user connect
  munged --force --key-file="$dir/munge/munge.key" --socket="$sock" --pid-file="$dir/run/munged.pid" \
    --log-file="$dir/log/munged.log" --seed-file="$dir/munge/munged.seed" >>"$dir/log/munged.log" 2>&1 \
    || fail_start "munged did not start"
  for _ in $(seq 50); do [ -S "$sock" ] && break; sleep 0.1; done
  [ -S "$sock" ] || fail_start "munged made no socket at $sock"

  # the node as slurmd sees it: CPUs, sockets, cores, threads, RealMemory
  local hw
  hw=$(slurmd -C 2>/dev/null | head -n 1 | sed -e 's/^NodeName=[^ ]* //') || true
  [[ "$hw" == *CPUs=* ]] || fail_start "slurmd -C did not describe this node: $(slurmd -C 2>&1 | head -n 3)"
  local ctld_port slurmd_port
  ctld_port=$(free_port)
  slurmd_port=$(free_port)
  while [ "$slurmd_port" = "$ctld_port" ]; do slurmd_port=$(free_port); done
  : >"$dir/etc/plugstack.conf"
  cat >"$dir/slurm.conf" <<EOF
# written by scripts/slurm_localhost.sh: a single-node cluster for tests
ClusterName=gpcrun-localhost
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$sock
SlurmUser=root
SlurmdUser=root
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/run/slurmctld.pid
SlurmdPidFile=$dir/run/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
PlugStackConfig=$dir/etc/plugstack.conf
# no cgroups here: plain process tracking, no task binding, no accounting gather
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=$dir/log/jobcomp.log
MpiDefault=none
SchedulerType=sched/builtin
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
MinJobAge=600
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
MailProg=/bin/true
KillWait=10
NodeName=$host NodeAddr=127.0.0.1 $hw State=UNKNOWN
PartitionName=local Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
  export SLURM_CONF="$dir/slurm.conf"
  slurmctld -f "$SLURM_CONF" -i >>"$dir/log/slurmctld.log" 2>&1 || fail_start "slurmctld did not start"
  slurmd -f "$SLURM_CONF" -N "$host" >>"$dir/log/slurmd.log" 2>&1 || fail_start "slurmd did not start"
  local state="" i
  for i in $(seq 300); do  # 30 s
    state=$(sinfo -h -N -n "$host" -o %T 2>/dev/null | head -n 1 || true)
    [ "$state" = "idle" ] && break
    for d in slurmctld slurmd; do
      if [ -s "$dir/run/$d.pid" ] && ! pid_alive "$(tr -dc '0-9' < "$dir/run/$d.pid")"; then
        fail_start "$d exited while the node came up"
      fi
    done
    sleep 0.1
  done
  [ "$state" = "idle" ] || fail_start "node $host is '${state:-unknown}' after 30 s, not idle"
  say "node $host idle: $hw (slurmctld :$ctld_port, slurmd :$slurmd_port)"
  echo "SLURM_CONF=$SLURM_CONF"
}

case "$cmd" in
  start) do_start ;;
  stop) do_stop ;;
  *) die 2 "usage: $0 start|stop DIR" ;;
esac

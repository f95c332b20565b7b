#!/usr/bin/env bash
# Stop the single-node SLURM started by .ci/slurm/start.sh, by its pid files (never by name).
#
#   .ci/slurm/stop.sh           # stop slurmd, slurmctld, slurmdbd, mariadb, munged (if ours)
#   .ci/slurm/stop.sh --purge   # also delete the state dir (config, accounting DB, logs)
#
# SLURM_STATE_DIR as for start.sh (default /tmp/slidemil-slurm). munged is only stopped if
# start.sh started it (then its pid file was copied into the state dir).
set -euo pipefail

STATE=${SLURM_STATE_DIR:-/tmp/slidemil-slurm}
purge=0
[[ ${1:-} == --purge ]] && purge=1

# stop_pidfile NAME PIDFILE: SIGTERM, wait up to 20 s, then SIGKILL
stop_pidfile() {
  local name=$1 pidfile=$2 pid i
  if [[ ! -s $pidfile ]]; then
    echo "[slurm-stop] $name: no pid file"
    return 0
  fi
  pid=$(cat "$pidfile")
  if ! kill -0 "$pid" 2>/dev/null; then
    echo "[slurm-stop] $name: not running (stale pid $pid)"
    rm -f "$pidfile"
    return 0
  fi
  kill -TERM "$pid"
  for i in $(seq 40); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.5
  done
  if kill -0 "$pid" 2>/dev/null; then
    echo "[slurm-stop] $name: pid $pid ignored SIGTERM, sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$pidfile"
  echo "[slurm-stop] $name: stopped (pid $pid)"
}

if [[ ! -d $STATE ]]; then
  echo "[slurm-stop] no state dir $STATE: nothing to stop"
  exit 0
fi

stop_pidfile slurmd "$STATE/run/slurmd.pid"
stop_pidfile slurmctld "$STATE/run/slurmctld.pid"
stop_pidfile slurmdbd "$STATE/run/slurmdbd.pid"
stop_pidfile mariadb "$STATE/mysqlrun/mysqld.pid" # mysqld_safe exits after a clean shutdown
if [[ -e $STATE/run/munged.pid ]]; then
  stop_pidfile munged "$STATE/run/munged.pid"
  rm -f /run/munge/munged.pid
fi

# A stopped SLURM leaves no config in /etc (clients would retry a dead slurmctld for ~10 s).
if [[ $(readlink /etc/slurm/slurm.conf 2>/dev/null) == "$STATE/slurm.conf" ]]; then
  rm -f /etc/slurm/slurm.conf
  echo "[slurm-stop] removed the /etc/slurm/slurm.conf link"
fi
if ((purge)); then
  rm -rf "$STATE" "$STATE.apt.log"
  echo "[slurm-stop] removed $STATE"
fi

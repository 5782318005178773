#!/usr/bin/env bash
# A real single-node Slurm cluster on loopback (Debian's slurmctld + slurmd + munge), for the
# submitit launcher test (tests/test_launchers.py) and for trying `hydra/launcher=slurm` without
# a cluster. Recipe: shared/ECOSYSTEM.md §3.1.
#
# Usage: bash scripts/slurm_local.sh [start|stop|status]
#   start   (default) install the packages with apt-get when missing (needs root), write
#           /etc/slurm/slurm.conf when there is none, start munged, slurmctld and slurmd, wait
#           until the node is idle. Prints "slurm: started" or "slurm: already running" (exit 0),
#           or "slurm: unavailable: REASON" (exit 1).
#   stop    stop the daemons this script started (by the PIDs in their pid files).
#   status  exit 0 when the node answers as idle/mixed/allocated.
# Then: nodex train --multirun hydra/launcher=slurm hydra.launcher.partition=debug model=vanilla,depthcat
set -uo pipefail

CONF=/etc/slurm/slurm.conf
MARK="# written by nodex scripts/slurm_local.sh"
PIDS=(/run/slurmd.pid /run/slurmctld.pid /run/munge/munged.pid)
WAIT_S="${SLURM_LOCAL_WAIT_S:-40}"

unavailable() { echo "slurm: unavailable: $*"; exit 1; }

node_up() {
  command -v sinfo >/dev/null 2>&1 || return 1
  local state
  state=$(timeout 5 sinfo -h -o %t 2>/dev/null | head -n1)
  [[ "$state" =~ ^(idle|mix|alloc|comp) ]]
}

write_conf() {
  local host cpus mem_mb
  host=$(hostname -s)
  cpus=$(nproc)
  mem_mb=$(awk '/MemTotal/ {printf "%d", $2 / 1024 * 0.8}' /proc/meminfo)
  mkdir -p /etc/slurm
  cat > "$CONF" <<EOF
$MARK (single node on loopback; see shared/ECOSYSTEM.md §3.1)
ClusterName=nodex
SlurmctldHost=${host}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
ReturnToService=2
SlurmdSpoolDir=/var/lib/slurm/slurmd
StateSaveLocation=/var/lib/slurm/slurmctld
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
NodeName=${host} NodeAddr=127.0.0.1 CPUs=${cpus} RealMemory=${mem_mb} State=UNKNOWN
PartitionName=debug Nodes=${host} Default=YES MaxTime=INFINITE State=UP
EOF
}

start() {
  if node_up; then echo "slurm: already running"; exit 0; fi
  [ "$(id -u)" = 0 ] || unavailable "needs root to install and start munge/slurmctld/slurmd (run: sudo bash $0)"
  if ! command -v slurmctld >/dev/null 2>&1 && [ ! -x /usr/sbin/slurmctld ]; then
    command -v apt-get >/dev/null 2>&1 || unavailable "no apt-get to install Debian's slurmctld/slurmd/munge"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q slurmctld slurmd slurm-client munge >/tmp/slurm_local_apt.log 2>&1 \
      || { apt-get update -q >>/tmp/slurm_local_apt.log 2>&1 && apt-get install -y -q slurmctld slurmd slurm-client munge >>/tmp/slurm_local_apt.log 2>&1; } \
      || unavailable "apt-get install slurmctld slurmd slurm-client munge failed (log: /tmp/slurm_local_apt.log)"
  fi
  [ -f "$CONF" ] || write_conf
  mkdir -p /var/lib/slurm/slurmd /var/lib/slurm/slurmctld /var/log/slurm /run/munge
  chown munge:munge /run/munge 2>/dev/null || true
  if [ ! -f /etc/munge/munge.key ]; then
    (command -v mungekey >/dev/null && mungekey --create) || /usr/sbin/create-munge-key -f >/dev/null 2>&1 \
      || unavailable "could not create /etc/munge/munge.key"
    chown munge:munge /etc/munge/munge.key; chmod 600 /etc/munge/munge.key
  fi
  if ! { [ -f /run/munge/munged.pid ] && kill -0 "$(cat /run/munge/munged.pid)" 2>/dev/null; }; then
    su -s /bin/sh munge -c /usr/sbin/munged || unavailable "munged did not start"
  fi
  if ! { [ -f /run/slurmctld.pid ] && kill -0 "$(cat /run/slurmctld.pid)" 2>/dev/null; }; then
    /usr/sbin/slurmctld || unavailable "slurmctld did not start (log: /var/log/slurm/slurmctld.log)"
  fi
  if ! { [ -f /run/slurmd.pid ] && kill -0 "$(cat /run/slurmd.pid)" 2>/dev/null; }; then
    /usr/sbin/slurmd || unavailable "slurmd did not start (log: /var/log/slurm/slurmd.log)"
  fi
  for _ in $(seq "$WAIT_S"); do
    if node_up; then echo "slurm: started"; exit 0; fi
    scontrol update nodename="$(hostname -s)" state=resume >/dev/null 2>&1 || true
    sleep 1
  done
  unavailable "node not idle after ${WAIT_S} s ($(timeout 5 sinfo -h -o '%N %t' 2>&1 | head -n1); logs in /var/log/slurm)"
}

stop() {
  # let finished jobs report back first: slurmstepd waits forever for a stopped slurmd
  for _ in $(seq 30); do
    [ -z "$(timeout 5 squeue -h -o %i 2>/dev/null)" ] && break
    sleep 1
  done
  for f in "${PIDS[@]}"; do
    if [ -f "$f" ]; then
      pid=$(cat "$f")
      kill "$pid" 2>/dev/null && echo "slurm: stopped $(basename "$f" .pid) ($pid)"
    fi
  done
  exit 0
}

case "${1:-start}" in
  start) start ;;
  stop) stop ;;
  status) node_up ;;
  *) echo "usage: bash $0 [start|stop|status]"; exit 2 ;;
esac

#!/usr/bin/env bash
# A single-node Slurm on this machine, for the test suite and for trying the templates:
#
#   bash scripts/slurm-local.sh start    # munge, slurmctld, slurmd; returns once the node is idle
#   bash scripts/slurm-local.sh status   # the node's state, or "stopped"
#   bash scripts/slurm-local.sh stop     # stops what start started
#
# Needs root and Debian's slurmctld, slurmd, slurm-client, munge and libpmix-dev (scripts/setup.sh
# installs them). Idempotent: start on a running Slurm only reports it. It writes
# /etc/slurm/slurm.conf, marked as its own, and refuses to touch one it did not write, so that it
# never replaces a real cluster's configuration. Daemons run without systemd: pid files and state
# under /run/slurm and /var/lib/slurm, logs under /var/log/slurm.
#
# The configuration is the smallest that behaves like a cluster for mezo's jobs: one node with the
# layout slurmd detects, one default partition, PMIx for srun, CPU binding, and
# EnforcePartLimits=ALL, so that a request the partition cannot meet fails at submission instead of
# pending forever.
set -euo pipefail

conf=/etc/slurm/slurm.conf
mark="# written by mezo scripts/slurm-local.sh"
run=/run/slurm
state=/var/lib/slurm
logs=/var/log/slurm

say() { printf 'slurm-local: %s\n' "$*"; }
die() { say "$*" >&2; exit 1; }

alive() { [[ -f "$1" ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

node_state() { timeout 5 sinfo -h -o %T 2>/dev/null | head -n 1; }

# munged answers (a credential can be made): a pid file or a process name can outlive it.
munge_up() { munge -n </dev/null >/dev/null 2>&1; }

write_conf() {
  if [[ -f "$conf" ]] && ! grep -qF "$mark" "$conf"; then
    die "$conf exists and was not written by this script; not replacing it"
  fi
  local node
  node="$(slurmd -C | head -n 1)"
  [[ "$node" == NodeName=* ]] || die "slurmd -C printed no node line: $node"
  node="${node% UpTime=*}"
  mkdir -p /etc/slurm
  cat > "$conf.tmp" <<EOF
$mark
ClusterName=mezo-local
SlurmctldHost=$(hostname -s)(127.0.0.1)
SlurmUser=slurm
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/affinity
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
ReturnToService=2
EnforcePartLimits=ALL
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
SlurmctldPidFile=$run/slurmctld.pid
SlurmdPidFile=$run/slurmd.pid
StateSaveLocation=$state/ctld
SlurmdSpoolDir=$state/d
SlurmctldLogFile=$logs/slurmctld.log
SlurmdLogFile=$logs/slurmd.log
$node NodeAddr=127.0.0.1 State=UNKNOWN
PartitionName=local Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
  mv "$conf.tmp" "$conf"
}

# slurmd initialises its cgroup plugin even when no cgroup feature is configured, and fails where
# nothing is mounted on /sys/fs/cgroup (a chroot, a bare container): mount the cgroup v1
# hierarchies it probes, as a systemd-less Debian would have them.
mount_cgroups() {
  [[ -n "$(ls -A /sys/fs/cgroup 2>/dev/null)" ]] && return
  say "nothing is mounted on /sys/fs/cgroup: mounting the cgroup v1 hierarchies slurmd needs"
  mount -t tmpfs cgroup_root /sys/fs/cgroup || die "cannot mount /sys/fs/cgroup"
  local c
  for c in cpuset memory devices freezer; do
    mkdir -p "/sys/fs/cgroup/$c"
    mount -t cgroup -o "$c" cgroup "/sys/fs/cgroup/$c" || die "cannot mount the $c cgroup"
  done
  mkdir -p /sys/fs/cgroup/systemd
  mount -t cgroup -o none,name=systemd cgroup /sys/fs/cgroup/systemd || die "cannot mount a named cgroup"
}

start() {
  [[ $(id -u) -eq 0 ]] || die "needs root"
  for tool in munged slurmctld slurmd sinfo sbatch; do
    command -v "$tool" >/dev/null || die "$tool not found: run scripts/setup.sh (it installs Slurm)"
  done
  if alive "$run/slurmctld.pid" && alive "$run/slurmd.pid" && munge_up; then
    say "already running: node $(node_state)"
    return
  fi
  write_conf
  mount_cgroups
  mkdir -p /run/munge "$run" "$state/ctld" "$state/d" "$logs"
  chown munge:munge /run/munge
  chown slurm:slurm "$run" "$state" "$state/ctld" "$logs"
  [[ -f /etc/munge/munge.key ]] || { mungekey --create >/dev/null 2>&1 || die "no /etc/munge/munge.key"; }
  if ! munge_up; then
    runuser -u munge -- /usr/sbin/munged || die "munged did not start (see /var/log/munge/munged.log)"
    munge_up || die "munged does not answer (see /var/log/munge/munged.log)"
  fi
  alive "$run/slurmctld.pid" || slurmctld || die "slurmctld did not start (see $logs/slurmctld.log)"
  alive "$run/slurmd.pid" || slurmd || die "slurmd did not start (see $logs/slurmd.log)"
  for _ in $(seq 1 60); do
    case "$(node_state)" in
      idle|mixed|allocated) say "up: node $(node_state)"; return ;;
    esac
    sleep 0.5
  done
  die "the node is not idle after 30 s (state: $(node_state)); see $logs"
}

stop() {
  local pid
  for daemon in slurmd slurmctld; do
    if alive "$run/$daemon.pid"; then
      pid="$(cat "$run/$daemon.pid")"
      kill "$pid"
      for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    fi
  done
  if alive /run/munge/munged.pid; then
    pid="$(cat /run/munge/munged.pid)"
    kill "$pid"
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  fi
  say "stopped"
}

status() {
  if alive "$run/slurmctld.pid" && alive "$run/slurmd.pid" && munge_up; then
    say "running: node $(node_state)"
  else
    say "stopped"
    return 3
  fi
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  *) die "usage: slurm-local.sh start|stop|status" ;;
esac

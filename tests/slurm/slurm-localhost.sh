#!/usr/bin/env bash
# slurm-localhost.sh - a real single-node SLURM cluster on localhost for CI (tested recipe).
# regbench's SLURM stage (tests/test_slurm.py) starts and stops it; the only change from the
# recipe it was adapted from is AccountingStoreFlags=job_comment, so that `sacct -o Comment`
# shows the rule each job ran (the slurm executor plugin puts "rule_<name>..." there).
#
# For Debian 12 (bookworm, SLURM 22.05.8), run as root, no systemd needed.
#   bash slurm-localhost.sh start    # install packages if missing, write configs, start daemons, smoke-test
#   bash slurm-localhost.sh stop     # stop every daemon this script started (by PID file), in reverse order
#   bash slurm-localhost.sh status   # show daemons, sinfo, scontrol ping
#
# Environment knobs:
#   SLURM_ACCOUNTING=1|0  (default 1) 1: slurmdbd + MariaDB, so `sacct` works and the
#                         snakemake slurm plugin runs with its defaults (status command
#                         sacct, --slurm-efficiency-report). 0: no accounting daemon
#                         (AccountingStorageType=accounting_storage/none); then `sacct`
#                         fails ("Slurm accounting storage is disabled") and snakemake MUST
#                         be run with `--slurm-status-command squeue` (else it hangs).
#   SLURM_PROCTRACK=linuxproc|cgroup (default linuxproc). cgroup also enforces
#                         --cpus-per-task/--mem (works here: cgroup v1 hybrid mount).
#   SLURM_PARTITION=debug (default), SLURM_CLUSTER=ci (default)
#   SLURM_SKIP_INSTALL=1  do not run apt-get (packages already installed)
set -euo pipefail

ACCOUNTING="${SLURM_ACCOUNTING:-1}"
PROCTRACK="${SLURM_PROCTRACK:-linuxproc}"
PARTITION="${SLURM_PARTITION:-debug}"
CLUSTER="${SLURM_CLUSTER:-ci}"
NODE="$(hostname -s)"
DB_PASS="slurm-ci-only"   # local-only MariaDB account on 127.0.0.1/socket; not a secret

log() { printf '[slurm-localhost %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }

# wait_for <seconds> <description> <command...>: poll every 0.5 s until the command succeeds
wait_for() {
  local secs="$1" what="$2"; shift 2
  local i
  for ((i = 0; i < secs * 2; i++)); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.5
  done
  log "timed out after ${secs}s waiting for: $what"
  return 1
}

pid_alive() { [[ -s "$1" ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

stop_pidfile() {  # stop_pidfile <name> <pidfile>
  local name="$1" pf="$2" pid i
  [[ -s "$pf" ]] || return 0
  pid="$(cat "$pf")"
  if kill -0 "$pid" 2>/dev/null; then
    log "stopping $name (pid $pid)"
    kill "$pid" 2>/dev/null || true
    for ((i = 0; i < 40; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    if kill -0 "$pid" 2>/dev/null; then log "$name did not stop, SIGKILL"; kill -9 "$pid" 2>/dev/null || true; fi
  fi
  rm -f "$pf"
}

do_stop() {
  stop_pidfile slurmd    /run/slurm/slurmd.pid
  stop_pidfile slurmctld /run/slurm/slurmctld.pid
  stop_pidfile slurmdbd  /run/slurm/slurmdbd.pid
  stop_pidfile mariadbd  /run/mysqld/mysqld.pid
  stop_pidfile munged    /run/munge/munged.pid
}

do_install() {
  [[ "${SLURM_SKIP_INSTALL:-0}" == 1 ]] && return 0
  local pkgs=(slurmctld slurmd slurm-client munge)
  [[ "$ACCOUNTING" == 1 ]] && pkgs+=(slurmdbd mariadb-server)
  local missing=()
  local p
  for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if ((${#missing[@]})); then
    log "apt-get install ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    # update only if the package lists are missing or stale (older than a day)
    if [[ -z "$(find /var/lib/apt/lists -maxdepth 1 -name '*_Packages' -mtime -1 2>/dev/null | head -n1)" ]]; then
      apt-get update -qq
    fi
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
}

start_munge() {
  if [[ ! -s /etc/munge/munge.key ]]; then
    log "creating munge key"
    mungekey --create --keyfile=/etc/munge/munge.key --force
  fi
  chown munge:munge /etc/munge/munge.key && chmod 0400 /etc/munge/munge.key
  install -d -o munge -g munge -m 0755 /run/munge
  if ! pid_alive /run/munge/munged.pid; then
    log "starting munged"
    runuser -u munge -- /usr/sbin/munged
  fi
  wait_for 20 "munge round trip" bash -c 'munge -n | unmunge'
}

start_accounting() {
  install -d -o mysql -g mysql -m 0755 /run/mysqld
  if [[ ! -d /var/lib/mysql/mysql ]]; then
    log "initialising MariaDB data directory"
    mariadb-install-db --user=mysql --datadir=/var/lib/mysql >/dev/null
  fi
  if ! pid_alive /run/mysqld/mysqld.pid; then
    log "starting mariadbd"
    # mariadbd does not daemonise; detach it from this shell. Networking off: slurmdbd uses the socket.
    setsid /usr/sbin/mariadbd --user=mysql --pid-file=/run/mysqld/mysqld.pid \
      --socket=/run/mysqld/mysqld.sock --skip-networking \
      --innodb-lock-wait-timeout=900 --innodb-buffer-pool-size=128M \
      </dev/null >>/var/log/slurm/mariadbd.log 2>&1 &
  fi
  wait_for 60 "mariadb socket" mariadb -u root -e 'select 1'
  mariadb -u root <<SQL
CREATE DATABASE IF NOT EXISTS slurm_acct_db;
CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '${DB_PASS}';
ALTER USER 'slurm'@'localhost' IDENTIFIED BY '${DB_PASS}';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';
FLUSH PRIVILEGES;
SQL
  cat >/etc/slurm/slurmdbd.conf <<EOF
AuthType=auth/munge
DbdHost=localhost
DbdPort=6819
SlurmUser=slurm
LogFile=/var/log/slurm/slurmdbd.log
PidFile=/run/slurm/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=localhost
StoragePort=3306
StorageUser=slurm
StoragePass=${DB_PASS}
StorageLoc=slurm_acct_db
EOF
  chown slurm:slurm /etc/slurm/slurmdbd.conf && chmod 0600 /etc/slurm/slurmdbd.conf
  if ! pid_alive /run/slurm/slurmdbd.pid; then
    log "starting slurmdbd"
    /usr/sbin/slurmdbd
  fi
  wait_for 60 "slurmdbd answering sacctmgr" sacctmgr -n list cluster
}

write_slurm_conf() {
  # Node line straight from the hardware slurmd sees (CPUs, sockets, cores, RealMemory).
  local nodeline
  nodeline="$(slurmd -C | head -n1)"
  [[ "$nodeline" == NodeName=* ]] || { log "unexpected 'slurmd -C' output: $nodeline"; exit 1; }
  local acct_lines
  if [[ "$ACCOUNTING" == 1 ]]; then
    acct_lines=$'AccountingStorageType=accounting_storage/slurmdbd\nAccountingStorageHost=localhost\nAccountingStoreFlags=job_comment\nJobAcctGatherType=jobacct_gather/linux\nJobAcctGatherFrequency=5'
  else
    acct_lines=$'AccountingStorageType=accounting_storage/none\nJobAcctGatherType=jobacct_gather/none'
  fi
  local track_lines
  if [[ "$PROCTRACK" == cgroup ]]; then
    track_lines=$'ProctrackType=proctrack/cgroup\nTaskPlugin=task/cgroup,task/affinity'
    cat >/etc/slurm/cgroup.conf <<EOF
CgroupPlugin=autodetect
ConstrainCores=yes
ConstrainRAMSpace=yes
EOF
  else
    track_lines=$'ProctrackType=proctrack/linuxproc\nTaskPlugin=task/none'
    rm -f /etc/slurm/cgroup.conf
  fi
  cat >/etc/slurm/slurm.conf <<EOF
# written by slurm-localhost.sh - single node CI cluster
ClusterName=${CLUSTER}
SlurmctldHost=${NODE}(127.0.0.1)
SlurmUser=slurm
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
${track_lines}
ReturnToService=2
SlurmctldPidFile=/run/slurm/slurmctld.pid
SlurmdPidFile=/run/slurm/slurmd.pid
SlurmdSpoolDir=/var/spool/slurmd
StateSaveLocation=/var/spool/slurmctld
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=500
${acct_lines}
JobCompType=jobcomp/none
# keep finished jobs visible to squeue for 5 min (snakemake's squeue status mode needs >= 120 s)
MinJobAge=300
${nodeline} NodeAddr=127.0.0.1 State=UNKNOWN
PartitionName=${PARTITION} Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
}

node_ready() {
  local st
  st="$(sinfo -h -n "$NODE" -o %t 2>/dev/null | head -n1)"
  [[ "$st" == idle || "$st" == mix || "$st" == alloc ]]
}

do_start() {
  [[ $EUID -eq 0 ]] || { log "run as root"; exit 1; }
  do_install
  do_stop   # restart cleanly if an earlier run left daemons behind
  install -d -o slurm -g slurm /run/slurm /var/log/slurm /var/spool/slurmctld
  install -d /var/spool/slurmd
  start_munge
  write_slurm_conf
  if [[ "$ACCOUNTING" == 1 ]]; then start_accounting; fi
  log "starting slurmctld"
  /usr/sbin/slurmctld
  wait_for 30 "slurmctld (scontrol ping)" bash -c 'scontrol ping | grep -q UP'
  log "starting slurmd"
  /usr/sbin/slurmd
  if ! wait_for 30 "node $NODE idle" node_ready; then
    scontrol update NodeName="$NODE" State=RESUME || true
    wait_for 30 "node $NODE idle after RESUME" node_ready || { sinfo -R; tail -n 20 /var/log/slurm/slurmctld.log /var/log/slurm/slurmd.log; exit 1; }
  fi
  log "smoke test: srun"
  timeout 60 srun -N1 -n1 -t 1 --mem=50 true
  if [[ "$ACCOUNTING" == 1 ]]; then
    wait_for 30 "sacct sees jobs" bash -c '[[ -n "$(sacct -X -n -a -o JobID -S now-1hour)" ]]'
  fi
  log "SLURM up: cluster=${CLUSTER} partition=${PARTITION} node=${NODE} accounting=${ACCOUNTING} proctrack=${PROCTRACK}"
  sinfo
}

do_status() {
  local pf
  for pf in /run/munge/munged.pid /run/mysqld/mysqld.pid /run/slurm/slurmdbd.pid /run/slurm/slurmctld.pid /run/slurm/slurmd.pid; do
    if pid_alive "$pf"; then echo "running  $(basename "$pf" .pid) pid $(cat "$pf")"; else echo "stopped  $(basename "$pf" .pid)"; fi
  done
  scontrol ping 2>/dev/null || true
  sinfo 2>/dev/null || true
}

case "${1:-start}" in
  start) do_start ;;
  stop) do_stop ;;
  status) do_status ;;
  *) echo "usage: $0 [start|stop|status]" >&2; exit 2 ;;
esac

#!/usr/bin/env bash
# Bring a single-node SLURM cluster (slurmctld + slurmd + slurmdbd/MariaDB accounting + munge) up or
# down on this machine, without systemd, so the SLURM path can be tried on a workstation and tested
# in CI.  Recipe and measured facts: ../shared/notes/slurm-local.md (Debian 12, SLURM 22.05).
#
#   scripts/local_slurm.sh up       # install (apt, if missing), configure, start; ready when sacct works
#   scripts/local_slurm.sh down     # cancel jobs, stop the daemons (reverse order)
#   scripts/local_slurm.sh status   # exit 0 when the cluster answers (sinfo + sacct)
#
# Run as root.  `up` is idempotent: when the cluster already answers it returns at once.
# Environment knobs:
#   SLURM_CPUS=8       CPUs announced for the node (overstated on purpose so arrays run several
#                      tasks at once; SlurmdParameters=config_overrides lets slurmd accept it)
#   CLUSTER=localcluster   SKIP_INSTALL=1 (never call apt)   APT_OPTS=... (extra apt-get options)
# submitit needs `sacct` (it reads job states from accounting), hence slurmdbd + MariaDB: without
# them a cancelled or crashed job is never seen as finished and job.result() hangs.
set -euo pipefail

CLUSTER=${CLUSTER:-localcluster}
SLURM_CPUS=${SLURM_CPUS:-8}
HOST=$(hostname -s)
LOCK=/run/local_slurm.lock
T0=$(date +%s.%N)

ts() { awk -v a="$T0" -v b="$(date +%s.%N)" -v m="$*" 'BEGIN{printf "[%6.1fs] %s\n", b-a, m}'; }

die() { echo "local_slurm.sh: $*" >&2; exit 1; }

waitfor() { # waitfor <seconds> <description> <command...>: poll every 0.25 s, dump logs on timeout
  local n=$(( $1 * 4 )) what=$2; shift 2
  for _ in $(seq 1 "$n"); do "$@" >/dev/null 2>&1 && { ts "$what ready"; return 0; }; sleep 0.25; done
  echo "TIMEOUT waiting for $what" >&2
  tail -n 30 /var/log/slurm/*.log /var/log/mariadbd.log >&2 || true
  return 1
}

alive() { # alive <pidfile>: the process named in the pid file runs
  [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null
}

healthy() { # the cluster answers: controller up, our node usable, accounting readable
  command -v sacct >/dev/null 2>&1 || return 1
  timeout 10 scontrol ping 2>/dev/null | grep -q UP || return 1
  local state
  state=$(timeout 10 sinfo -h -n "$HOST" -o %T 2>/dev/null) || return 1
  case "$state" in idle|mixed|allocated|completing) ;; *) return 1 ;; esac
  timeout 10 sacct -n -X -S now >/dev/null 2>&1
}

install_packages() {
  local missing=0 bin
  for bin in slurmctld slurmd sbatch slurmdbd munged mariadbd; do
    command -v "$bin" >/dev/null 2>&1 || [ -x "/usr/sbin/$bin" ] || missing=1
  done
  [ "$missing" = 1 ] || return 0
  [ "${SKIP_INSTALL:-0}" != 1 ] || die "SLURM packages missing and SKIP_INSTALL=1"
  command -v apt-get >/dev/null 2>&1 || die "SLURM is not installed and apt-get is not available"
  local pkgs="slurmctld slurmd slurm-client slurmdbd munge mariadb-server"
  # shellcheck disable=SC2086  # APT_OPTS is a list of options on purpose
  if ! DEBIAN_FRONTEND=noninteractive apt-get install ${APT_OPTS:-} -y -q --no-install-recommends $pkgs \
      >/tmp/local_slurm_apt.log 2>&1; then
    # a fresh machine may have empty package lists: refresh once and retry
    DEBIAN_FRONTEND=noninteractive apt-get update -q >>/tmp/local_slurm_apt.log 2>&1 || true
    # shellcheck disable=SC2086
    DEBIAN_FRONTEND=noninteractive apt-get install ${APT_OPTS:-} -y -q --no-install-recommends $pkgs \
        >>/tmp/local_slurm_apt.log 2>&1 || { tail -n 20 /tmp/local_slurm_apt.log >&2; die "apt-get install failed"; }
  fi
  ts "apt-get install done"
}

write_configs() {
  mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm /run/munge /run/mysqld
  chown munge:munge /run/munge
  chown mysql:root /run/mysqld
  if [ ! -s /etc/munge/munge.key ]; then
    mungekey --create --keyfile=/etc/munge/munge.key
    chown munge:munge /etc/munge/munge.key
    chmod 400 /etc/munge/munge.key
  fi
  local mem
  mem=$(slurmd -C | head -n 1 | sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p')
  [ -n "$mem" ] || die "could not read RealMemory from 'slurmd -C'"
  cat > /etc/slurm/slurm.conf <<CONF
# written by scripts/local_slurm.sh: a single-node test cluster
ClusterName=${CLUSTER}
SlurmctldHost=${HOST}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
# a requeued job waits cred_expire seconds before it may run again (default 120)
AuthInfo=cred_expire=10
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
MpiDefault=none
MailProg=/bin/true
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
JobCompType=jobcomp/none
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=5,bf_interval=5
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# without a default, a job that asks for no memory gets the whole node and jobs run one at a time
DefMemPerCPU=1024
ReturnToService=2
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
MinJobAge=300
KillWait=5
Waittime=0
# the node is announced with ${SLURM_CPUS} CPUs whatever it has, so arrays run several tasks at once
SlurmdParameters=config_overrides
NodeName=${HOST} CPUs=${SLURM_CPUS} Boards=1 SocketsPerBoard=1 CoresPerSocket=${SLURM_CPUS} ThreadsPerCore=1 RealMemory=${mem} NodeAddr=127.0.0.1 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF
  cat > /etc/slurm/slurmdbd.conf <<CONF
AuthType=auth/munge
DbdHost=localhost
DbdPort=6819
SlurmUser=root
DebugLevel=info
LogFile=/var/log/slurm/slurmdbd.log
PidFile=/run/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=localhost
StoragePort=3306
StorageUser=slurm
StoragePass=slurmpw
StorageLoc=slurm_acct_db
CONF
  chmod 600 /etc/slurm/slurmdbd.conf   # slurmdbd refuses a world-readable slurmdbd.conf
  ts "config written"
}

start_daemons() { # in dependency order; a daemon that already runs is left alone
  # (each start closes fd 9, the lock: a daemon inheriting it would hold the lock forever)
  alive /run/munge/munged.pid || runuser -u munge -- /usr/sbin/munged 9>&-
  waitfor 10 munged bash -c 'munge -n | unmunge'
  if ! alive /run/mysqld/mysqld.pid; then
    setsid nohup /usr/sbin/mariadbd --user=mysql --pid-file=/run/mysqld/mysqld.pid \
        --innodb-buffer-pool-size=1G --innodb-lock-wait-timeout=900 >/var/log/mariadbd.log 2>&1 </dev/null 9>&- &
  fi
  waitfor 60 mariadbd mariadb-admin ping
  mariadb -e "CREATE DATABASE IF NOT EXISTS slurm_acct_db;
    CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'slurmpw';
    GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost'; FLUSH PRIVILEGES;"
  alive /run/slurmdbd.pid || slurmdbd 9>&-
  waitfor 60 slurmdbd bash -c 'exec 3<>/dev/tcp/127.0.0.1/6819'
  alive /run/slurmctld.pid || slurmctld 9>&-
  waitfor 60 slurmctld scontrol ping
  alive /run/slurmd.pid || slurmd 9>&-
  # a node left DOWN/DRAIN by an earlier unclean stop is put back into service
  scontrol update NodeName="$HOST" State=RESUME >/dev/null 2>&1 || true
  waitfor 60 "node idle" bash -c "case \$(sinfo -h -n $HOST -o %T) in idle|mixed|allocated) ;; *) exit 1;; esac"
  # slurmctld registers the cluster in slurmdbd by itself (22.05); sacct needs that
  waitfor 60 "cluster registered" bash -c "sacctmgr -n -P list cluster format=cluster | grep -qx $CLUSTER"
  waitfor 30 sacct sacct -n -X
}

stop() { # stop <pidfile>: TERM, then wait up to 20 s
  alive "$1" || return 0
  local pid; pid=$(cat "$1")
  kill "$pid" 2>/dev/null || return 0
  for _ in $(seq 1 80); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.25; done
  echo "pid $pid ($1) still alive" >&2
}

cmd_up() {
  [ "$(id -u)" = 0 ] || die "must run as root (it installs packages and starts system daemons)"
  if healthy; then ts "SLURM already up"; return 0; fi
  install_packages
  write_configs
  start_daemons
  ts "SLURM ready ($(sinfo -h -o '%D node, %c CPUs, partition %P'))"
}

cmd_down() {
  [ "$(id -u)" = 0 ] || die "must run as root"
  local jobs
  # killing slurmd does not kill running jobs (slurmstepd survives), so cancel them first
  jobs=$(squeue -h -o %i 2>/dev/null || true)
  if [ -n "$jobs" ]; then
    # shellcheck disable=SC2086
    scancel $jobs || true
    sleep 2
  fi
  stop /run/slurmd.pid; stop /run/slurmctld.pid; stop /run/slurmdbd.pid
  stop /run/mysqld/mysqld.pid; stop /run/munge/munged.pid
  ts "SLURM stopped"
}

main() {
  local cmd=${1:-}
  case "$cmd" in
    up|down)
      # two callers at once (e.g. two test sessions) must not race on the daemons
      exec 9>"$LOCK"
      flock 9
      "cmd_$cmd" ;;
    status) healthy ;;
    *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
  esac
}

main "$@"

#!/usr/bin/env bash
# A real single-node SLURM cluster with accounting, for tests and CI.
#
#   bash .ci/slurm-cluster.sh start    # install if needed, start, return once the node is idle
#   bash .ci/slurm-cluster.sh status   # exit 0 only if every daemon runs and the node answers
#   bash .ci/slurm-cluster.sh stop     # stop the daemons this script started (state is kept)
#
# Daemons (all started by hand, no systemd): munged, mariadbd (socket only), slurmdbd,
# slurmctld, slurmd. Config, state, logs and pid files live under one directory,
# $SLURM_CI_DIR (default /tmp/vqshrink-slurm); delete it after `stop` for a clean slate.
# Clients find the config through /etc/slurm/slurm.conf, a symlink into that directory
# (made only when no other slurm.conf is there; otherwise export SLURM_CONF yourself).
#
# Env: SLURM_CI_DIR, SLURM_CI_TIMEOUT (seconds to wait for an idle node, default 60).
# Needs root; re-executes itself with `sudo -n` otherwise.
set -euo pipefail

if [ "$(id -u)" -ne 0 ]; then
  exec sudo -n -E bash "$0" "$@"
fi

D=${SLURM_CI_DIR:-/tmp/vqshrink-slurm}
TIMEOUT=${SLURM_CI_TIMEOUT:-60}
CONF=$D/etc/slurm.conf
HOST=$(hostname -s)
MYSQL_SOCK=$D/mysqld/mysqld.sock
DB_PASS=vqshrink-ci-only        # local, socket-only database; not a secret
export SLURM_CONF=$CONF
PACKAGES="slurmctld slurmd slurm-client munge slurmdbd mariadb-server"
DAEMONS="munged mariadbd slurmdbd slurmctld slurmd"

log() { printf '[slurm-cluster] %s\n' "$*" >&2; }

pidfile() {
  case $1 in
    munged) echo "$D/munge/munged.pid" ;;
    mariadbd) echo "$D/mysqld/mariadbd.pid" ;;
    *) echo "$D/run/$1.pid" ;;
  esac
}

logfile() {
  case $1 in
    munged) echo "$D/munge/munged.log" ;;
    mariadbd) echo "$D/mysqld/mariadbd.log" ;;
    *) echo "$D/log/$1.log" ;;
  esac
}

# PID of a daemon we started, if it is still that process; empty otherwise.
alive_pid() {
  local f pid
  f=$(pidfile "$1")
  [ -s "$f" ] || return 0
  pid=$(tr -dc '0-9' <"$f")
  [ -n "$pid" ] && [ -r "/proc/$pid/comm" ] || return 0
  [ "$(cat "/proc/$pid/comm")" = "$1" ] && echo "$pid"
  return 0
}

install_packages() {
  local missing=0 cmd
  for cmd in slurmctld slurmd sinfo sbatch sacct munged slurmdbd mariadbd mariadb-install-db; do
    command -v "$cmd" >/dev/null 2>&1 || PATH=$PATH:/usr/sbin command -v "$cmd" >/dev/null 2>&1 || missing=1
  done
  [ "$missing" -eq 0 ] && return 0
  log "installing: $PACKAGES"
  # Keep the packages' init scripts from starting daemons that would clash with ours.
  local made_policy=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
    chmod 755 /usr/sbin/policy-rc.d
    made_policy=1
  fi
  local rc=0
  {
    DEBIAN_FRONTEND=noninteractive apt-get update -qq &&
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $PACKAGES
  } >"${TMPDIR:-/tmp}/slurm-ci-apt.log" 2>&1 || rc=$?
  [ "$made_policy" -eq 1 ] && rm -f /usr/sbin/policy-rc.d
  if [ "$rc" -ne 0 ]; then
    tail -n 30 "${TMPDIR:-/tmp}/slurm-ci-apt.log" >&2
    log "package installation failed (rc=$rc)"
    exit 1
  fi
}

write_config() {
  local cpus mem_mib
  cpus=$(nproc)
  # slurmd marks the node invalid if RealMemory exceeds what it detects: keep 1 GiB margin.
  mem_mib=$(awk '/^MemTotal:/ {m = int($2 / 1024) - 1024; if (m < 512) m = 512; print m}' /proc/meminfo)
  cat >"$CONF.tmp" <<EOF
# Written by .ci/slurm-cluster.sh; rewritten on every start.
ClusterName=ci
SlurmctldHost=$HOST(127.0.0.1)
AuthType=auth/munge
# A requeued job may start again only cred_expire+1 s later (default 120).
AuthInfo=cred_expire=10
CredType=cred/munge
SlurmUser=slurm
SlurmdUser=root
StateSaveLocation=$D/ctld
SlurmdSpoolDir=$D/slurmd
SlurmctldPidFile=$(pidfile slurmctld)
SlurmdPidFile=$(pidfile slurmd)
SlurmctldLogFile=$(logfile slurmctld)
SlurmdLogFile=$(logfile slurmd)
# No cgroups here: track processes by parentage, no task binding.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/linux
JobCompType=jobcomp/none
MpiDefault=none
SwitchType=switch/none
MailProg=/bin/true
SchedulerType=sched/backfill
# Allocate batch jobs at once (default: on a 3 s tick), and look at pending jobs
# (e.g. a requeued job whose BeginTime passed) every 2 s, not every 30-60 s.
SchedulerParameters=batch_sched_delay=0,sched_interval=2,bf_interval=2
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# Without this a job with no --mem takes the whole node's memory.
DefMemPerCPU=1024
ReturnToService=2
SlurmdTimeout=300
InactiveLimit=0
# Finished jobs stay visible to squeue for 5 minutes.
MinJobAge=300
Waittime=0
# Requeue and time limits (measured; see the requeue test in tests/test_launch.py):
# batch jobs may be requeued (scontrol requeue, as submitit does on timeout); no grace
# period past the limit; SIGKILL 5 s after SIGTERM. slurmctld checks limits and sends
# --signal warnings on a fixed 30 s tick (compiled in), warnings up to 30 s early.
JobRequeue=1
OverTimeLimit=0
KillWait=5
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem_mib State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
  mv "$CONF.tmp" "$CONF"
  cat >"$D/etc/slurmdbd.conf" <<EOF
AuthType=auth/munge
DbdHost=localhost
SlurmUser=slurm
PidFile=$(pidfile slurmdbd)
LogFile=$(logfile slurmdbd)
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StoragePass=$DB_PASS
StorageLoc=slurm_acct_db
EOF
  chown slurm:slurm "$D/etc/slurmdbd.conf"
  chmod 600 "$D/etc/slurmdbd.conf"
  # Clients (sbatch, sacct, scontrol inside jobs) read the default path.
  if [ -L /etc/slurm/slurm.conf ] || [ ! -e /etc/slurm/slurm.conf ]; then
    mkdir -p /etc/slurm
    ln -sfn "$CONF" /etc/slurm/slurm.conf
  elif [ "$(readlink -f /etc/slurm/slurm.conf)" != "$(readlink -f "$CONF")" ]; then
    log "warning: /etc/slurm/slurm.conf is not ours; clients need: export SLURM_CONF=$CONF"
  fi
}

make_dirs() {
  install -d -m 0755 "$D" "$D/etc" "$D/log" "$D/run"
  install -d -m 0755 -o slurm -g slurm "$D/ctld" "$D/slurmd"
  chown slurm:slurm "$D/log" "$D/run"
  install -d -m 0700 -o munge -g munge "$D/munge"
  install -d -m 0755 -o mysql -g mysql "$D/mysqld" "$D/mysql"
  install -d -m 0755 -o munge -g munge /run/munge
}

# Run a command detached from the caller's stdin/stdout/stderr (CI pipes must close).
detached() { "$@" </dev/null >>"$D/log/launch.log" 2>&1; }

wait_for() {  # wait_for SECONDS WHAT CMD... : poll CMD until it succeeds
  local limit=$1 what=$2 t0=$SECONDS
  shift 2
  until "$@" >/dev/null 2>&1; do
    if [ $((SECONDS - t0)) -ge "$limit" ]; then
      log "timed out after ${limit}s waiting for $what"
      return 1
    fi
    sleep 0.1
  done
}

munge_works() { munge -n </dev/null | unmunge >/dev/null; }
mysql_works() { mariadb-admin --no-defaults --socket="$MYSQL_SOCK" -u root ping; }
dbd_works() { timeout 5 sacctmgr -n -i show cluster; }
ctld_works() { timeout 5 scontrol ping | grep -q UP; }

node_state() { timeout 5 sinfo -h -n "$HOST" -o %T 2>/dev/null | head -n 1; }
node_idle() { case "$(node_state)" in idle | mixed | allocated | completing) return 0 ;; esac; return 1; }

start_munged() {
  if munge_works 2>/dev/null; then return 0; fi  # a munged of our own or the system's
  if [ ! -s /etc/munge/munge.key ]; then
    install -d -m 0700 -o munge -g munge /etc/munge
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
    chown munge:munge /etc/munge/munge.key
    chmod 0400 /etc/munge/munge.key
  fi
  detached runuser -u munge -- munged --pid-file="$(pidfile munged)" \
    --log-file="$(logfile munged)" --seed-file="$D/munge/munged.seed"
  wait_for 15 munged munge_works
}

start_mariadbd() {
  if [ ! -d "$D/mysql/mysql" ]; then
    detached mariadb-install-db --no-defaults --user=mysql --datadir="$D/mysql" \
      --auth-root-authentication-method=socket --skip-test-db
  fi
  # setsid + & : mariadbd does not fork itself.
  setsid mariadbd --no-defaults --user=mysql --datadir="$D/mysql" --socket="$MYSQL_SOCK" \
    --pid-file="$(pidfile mariadbd)" --skip-networking --log-error="$(logfile mariadbd)" \
    </dev/null >>"$D/log/launch.log" 2>&1 &
  wait_for 30 mariadbd mysql_works
  mariadb --no-defaults --socket="$MYSQL_SOCK" -u root <<EOF
CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$DB_PASS';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';
EOF
}

start_slurmdbd() {
  # slurmdbd reaches the socket-only MariaDB through this libmariadb variable.
  MYSQL_UNIX_PORT=$MYSQL_SOCK detached slurmdbd
  wait_for 30 slurmdbd dbd_works
}

start_all() {
  install_packages
  make_dirs
  write_config
  [ -n "$(alive_pid munged)" ] || start_munged
  [ -n "$(alive_pid mariadbd)" ] || start_mariadbd
  [ -n "$(alive_pid slurmdbd)" ] || start_slurmdbd
  [ -n "$(alive_pid slurmctld)" ] || detached slurmctld
  wait_for 30 slurmctld ctld_works
  [ -n "$(alive_pid slurmd)" ] || detached slurmd
  local t0=$SECONDS state
  until node_idle; do
    state=$(node_state)
    # A node left down/drained by an earlier run: put it back in service.
    case "$state" in down* | drain* | fail*)
      scontrol update NodeName="$HOST" State=RESUME >/dev/null 2>&1 || true ;;
    esac
    if [ $((SECONDS - t0)) -ge "$TIMEOUT" ]; then
      log "node $HOST not idle after ${TIMEOUT}s (state: '${state:-no answer}')"
      timeout 5 sinfo -R >&2 || true
      dump_logs
      exit 1
    fi
    sleep 0.2
  done
}

dump_logs() {
  local d f
  for d in $DAEMONS; do
    f=$(logfile "$d")
    [ -f "$f" ] || continue
    printf '\n==== %s (pid %s) ====\n' "$f" "$(alive_pid "$d")" >&2
    tail -n 15 "$f" >&2
  done
  [ -f "$D/log/launch.log" ] && { printf '\n==== %s ====\n' "$D/log/launch.log" >&2; tail -n 15 "$D/log/launch.log" >&2; }
  return 0
}

stop_daemons() {  # stop_daemons NAME... : SIGTERM all at once, then wait for each
  local d pid pids=""
  for d in "$@"; do
    pid=$(alive_pid "$d")
    [ -n "$pid" ] && kill -TERM "$pid" 2>/dev/null && pids="$pids $d:$pid"
  done
  local entry t0
  for entry in $pids; do
    d=${entry%%:*} pid=${entry#*:} t0=$SECONDS
    while [ -d "/proc/$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$d" ]; do
      if [ $((SECONDS - t0)) -ge 20 ]; then
        log "$d ($pid) ignored SIGTERM for 20s; sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
        break
      fi
      sleep 0.1
    done
    rm -f "$(pidfile "$d")"
  done
}

status() {
  local d pid ok=0
  for d in $DAEMONS; do
    pid=$(alive_pid "$d")
    if [ -n "$pid" ]; then
      printf '%-10s running (pid %s)\n' "$d" "$pid"
    elif [ "$d" = munged ] && munge_works 2>/dev/null; then
      printf '%-10s running (not started by this script)\n' "$d"
    else
      printf '%-10s stopped\n' "$d"
      ok=1
    fi
  done
  local state=""
  [ -n "$(alive_pid slurmctld)" ] && state=$(node_state)
  printf 'node %s: %s\nSLURM_CONF=%s\n' "$HOST" "${state:-no answer}" "$CONF"
  [ "$ok" -eq 0 ] && node_idle
}

case "${1:-}" in
  start)
    if status >/dev/null 2>&1; then
      log "already running (node $HOST: $(node_state))"
      exit 0
    fi
    t0=$(date +%s.%N)
    start_all
    log "up in $(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN {printf "%.1f", b - a}') s: node $HOST $(node_state), state in $D"
    ;;
  stop)
    # Compute nodes first, the databases last (slurmctld flushes to slurmdbd on exit).
    stop_daemons slurmd slurmctld
    stop_daemons slurmdbd
    stop_daemons mariadbd munged
    if [ "$(readlink /etc/slurm/slurm.conf 2>/dev/null)" = "$CONF" ]; then
      rm -f /etc/slurm/slurm.conf
    fi
    log "stopped (state kept in $D)"
    ;;
  status)
    status
    ;;
  *)
    echo "usage: $0 start|stop|status" >&2
    exit 2
    ;;
esac

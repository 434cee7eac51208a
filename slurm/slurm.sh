#!/usr/bin/env bash
# A real single-node Slurm cluster on this machine, for CI and the tests.
#
#   bash slurm/slurm.sh start    install (if missing), configure, start, wait until jobs run
#   bash slurm/slurm.sh stop     stop the daemons by their pid files
#   bash slurm/slurm.sh status   exit 0 if up and accepting jobs, else 1
#
# There is no systemd/init here, so the daemons (munged, slurmctld, slurmd) are started
# directly and tracked through pid files in the state directory. Must run as root.
# See slurm/README.md.
set -euo pipefail

STATE=${HPCPROC_SLURM_STATE:-/var/tmp/hpcproc-slurm}
# The Debian client tools (sinfo, sbatch, sacct, ...) read this path; don't move it.
CONF=/etc/slurm/slurm.conf
MUNGE_KEY=/etc/munge/munge.key
# munged runs as the munge user, so its pid and log files live in a directory it owns.
MUNGE_DIR=$STATE/munge
# Default socket path: Slurm's auth/munge looks there.
MUNGE_SOCKET=/run/munge/munge.socket.2
START_TIMEOUT=60
# Order matters: stop the consumers of munge before munge itself.
DAEMONS=(slurmd slurmctld munged)

log() { echo "slurm: $*"; }
die() { echo "slurm: $*" >&2; exit 1; }

pidfile() {
  case $1 in
    munged) echo "$MUNGE_DIR/munged.pid" ;;
    *) echo "$STATE/$1.pid" ;;
  esac
}

# Pid of a daemon if its pid file names a live process of that name (guards against
# stale pid files whose pid was reused by something else), else nothing and status 1.
daemon_pid() {
  local f pid
  f=$(pidfile "$1")
  [[ -r $f ]] || return 1
  pid=$(tr -dc '0-9' <"$f")
  [[ -n $pid && -r /proc/$pid/comm && $(</proc/"$pid"/comm) == "$1" ]] && alive "$pid" || return 1
  echo "$pid"
}

# True if the process exists and is not a zombie. Here pid 1 is not an init that reaps
# orphans, so a daemon that exited can linger as a zombie, which kill -0 still "finds".
alive() {
  local stat
  stat=$(cat /proc/"$1"/stat 2>/dev/null) || return 1
  # The state letter follows the ")" that ends the command name.
  [[ ${stat##*) } != Z* ]]
}

# --- installation ---------------------------------------------------------------------

install_packages() {
  local needed=(slurmctld slurmd munged mungekey sinfo srun sacct) cmd
  for cmd in "${needed[@]}"; do
    command -v "$cmd" >/dev/null || { apt_install slurm-wlm munge; return; }
  done
}

apt_install() {
  local apt=(apt-get install -y -q --no-install-recommends "$@")
  log "installing $*" >&2
  # The package lists may be stale or absent on a fresh machine: update once, then retry.
  DEBIAN_FRONTEND=noninteractive "${apt[@]}" >"$STATE/apt.log" 2>&1 \
    || { apt-get update -q >>"$STATE/apt.log" 2>&1 \
         && DEBIAN_FRONTEND=noninteractive "${apt[@]}" >>"$STATE/apt.log" 2>&1; } \
    || die "apt-get install $* failed (see $STATE/apt.log)"
}

# --- configuration --------------------------------------------------------------------

prepare_dirs() {
  install -d -m 0755 "$STATE" "$STATE/spool/slurmd" "$STATE/spool/ctld" /etc/slurm
  # munged checks ownership and permissions of its key, socket and log directories.
  install -d -o munge -g munge -m 0700 /etc/munge /var/lib/munge "$MUNGE_DIR"
  install -d -o munge -g munge -m 0755 /run/munge
  if [[ ! -s $MUNGE_KEY ]]; then
    mungekey --create --keyfile="$MUNGE_KEY" 2>/dev/null \
      || dd if=/dev/urandom of="$MUNGE_KEY" bs=1024 count=1 status=none
  fi
  chown munge:munge "$MUNGE_KEY"
  chmod 0400 "$MUNGE_KEY"
}

# The slurm.conf for this machine, on stdout. The node's hardware is copied from
# `slurmd -C` so slurmd does not drain the node for a mismatch.
render_config() {
  local node hw mem
  node=$(hostname -s)
  # e.g. "NodeName=vm CPUs=2 Boards=1 SocketsPerBoard=1 CoresPerSocket=2 ThreadsPerCore=1
  #       RealMemory=24000"; keep only the hardware fields.
  hw=$(slurmd -C | sed -n 's/^NodeName=[^ ]* //p' | head -n1)
  [[ -n $hw ]] || die "slurmd -C printed no node line"
  mem=$(sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' <<<"$hw")
  # Leave a little headroom: if the memory seen at registration is below the configured
  # value (it fluctuates), slurmctld drains the node.
  hw=$(sed 's/ *RealMemory=[0-9]*//; s/ *UpTime=.*//' <<<"$hw")
  cat <<EOF
# Written by slurm/slurm.sh on each start; edit the script, not this file.
ClusterName=hpcproc
SlurmctldHost=$node(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
MailProg=/bin/true

StateSaveLocation=$STATE/spool/ctld
SlurmdSpoolDir=$STATE/spool/slurmd
SlurmctldPidFile=$(pidfile slurmctld)
SlurmdPidFile=$(pidfile slurmd)
SlurmctldLogFile=$STATE/slurmctld.log
SlurmdLogFile=$STATE/slurmd.log

# No cgroups here: track processes through /proc, no task binding.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
# No accounting database; the job completion file lets 'sacct -c' report final states
# (COMPLETED, FAILED, TIMEOUT, CANCELLED) after scontrol has forgotten the job.
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=$STATE/jobcomp.log

SchedulerType=sched/backfill
# Start batch jobs at once instead of batching them up for a few seconds.
SchedulerParameters=batch_sched_delay=0
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# Without a default a job that gives no --mem gets the whole node's memory.
DefMemPerCPU=1000

ReturnToService=2
MinJobAge=300
KillWait=5
OverTimeLimit=0
InactiveLimit=0
SlurmdTimeout=300

NodeName=$node NodeAddr=127.0.0.1 $hw RealMemory=$((mem > 1024 ? mem - 512 : mem)) State=UNKNOWN
PartitionName=debug Nodes=$node Default=YES MaxTime=INFINITE MaxNodes=1 State=UP
PartitionName=short Nodes=$node Default=NO MaxTime=1 MaxNodes=1 State=UP
EOF
}

# --- daemons --------------------------------------------------------------------------

start_daemons() {
  daemon_pid munged >/dev/null || {
    rm -f "$(pidfile munged)"
    # munged refuses a key not owned by the user it runs as, so run it as munge.
    runuser -u munge -- munged --pid-file="$(pidfile munged)" \
      --log-file="$MUNGE_DIR/munged.log" --socket="$MUNGE_SOCKET" \
      || die "munged failed to start (see $MUNGE_DIR/munged.log)"
  }
  # A socket left by an earlier munged may still exist, so test a real credential round trip.
  wait_for "munged to answer" 10 munge_works
  # slurmctld and slurmd daemonise themselves and write the pid files named in slurm.conf.
  daemon_pid slurmctld >/dev/null \
    || slurmctld -f "$CONF" || die "slurmctld failed to start (see $STATE/slurmctld.log)"
  daemon_pid slurmd >/dev/null \
    || slurmd -f "$CONF" || die "slurmd failed to start (see $STATE/slurmd.log)"
}

stop_daemons() {
  local d pid
  for d in "${DAEMONS[@]}"; do
    pid=$(daemon_pid "$d") || { rm -f "$(pidfile "$d")"; continue; }
    kill "$pid" 2>/dev/null || true
    # Give it time to save state, then insist.
    wait_for "$d to exit" 20 not_alive "$pid" 2>/dev/null || kill -9 "$pid" 2>/dev/null || true
    rm -f "$(pidfile "$d")"
  done
}

not_alive() { ! alive "$1"; }

munge_works() { munge -n --socket="$MUNGE_SOCKET" | unmunge --socket="$MUNGE_SOCKET"; }

# wait_for DESCRIPTION SECONDS COMMAND...: poll COMMAND until it succeeds; on timeout
# print the reason to stderr and return 1.
wait_for() {
  local what=$1 secs=$2 deadline
  shift 2
  deadline=$((SECONDS + secs))
  until "$@" >/dev/null 2>&1; do
    ((SECONDS < deadline)) || { echo "slurm: timed out after ${secs}s waiting for $what" >&2; return 1; }
    sleep 0.2
  done
}

# --- health ---------------------------------------------------------------------------

# All daemons alive, the controller answers, and every node is usable (idle, mixed or
# allocated, without a '*' for not responding, and not drained).
healthy() {
  local d states
  for d in "${DAEMONS[@]}"; do daemon_pid "$d" >/dev/null || return 1; done
  scontrol ping 2>/dev/null | grep -q 'is UP' || return 1
  states=$(sinfo -h -N -o '%T' 2>/dev/null) || return 1
  [[ -n $states ]] && ! grep -qvE '^(idle|mixed|allocated|completing)$' <<<"$states"
}

# A trivial job must run to completion: proves slurmd can launch steps.
runs_a_job() {
  timeout 30 srun -N1 -n1 -t 1 -J hpcproc-slurm-check true
}

partitions() { sinfo -h -o '%P' | paste -sd, -; }

# --- commands -------------------------------------------------------------------------

cmd_start() {
  [[ $(id -u) == 0 ]] || die "start must run as root"
  install -d -m 0755 "$STATE"
  install_packages
  local conf
  conf=$(render_config)
  if healthy; then
    # Running daemons read the config at start: restart only if the script changed it.
    if [[ $conf == "$(cat "$CONF" 2>/dev/null)" ]]; then
      log "up (partitions: $(partitions))"
      return 0
    fi
    log "configuration changed, restarting" >&2
    stop_daemons
  fi
  prepare_dirs
  printf '%s\n' "$conf" >"$CONF"
  start_daemons
  local t0=$SECONDS
  wait_for "the node to become idle" "$START_TIMEOUT" healthy \
    || die "not healthy after ${START_TIMEOUT}s: $(sinfo -h -N -o '%N %T %E' 2>&1 | head -n1) (logs in $STATE)"
  runs_a_job || die "a trivial srun job did not complete (logs in $STATE)"
  log "up (partitions: $(partitions))"
  [[ -z ${HPCPROC_SLURM_VERBOSE:-} ]] || log "ready $((SECONDS - t0))s after the daemons started" >&2
}

cmd_stop() {
  stop_daemons
  log "stopped"
}

cmd_status() {
  if healthy; then
    log "up (partitions: $(partitions))"
  else
    log "down"
    return 1
  fi
}

case ${1:-} in
  start) cmd_start ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  *) die "usage: $0 start|stop|status" ;;
esac

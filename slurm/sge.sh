#!/usr/bin/env bash
# A real single-node Grid Engine (Debian 12's gridengine 8.1.9) for CI and tests.
#
#   bash slurm/sge.sh start    install if missing, configure, start the daemons, wait until a job runs
#   bash slurm/sge.sh stop     stop sge_execd and sge_qmaster (by the pids they wrote)
#   bash slurm/sge.sh status   exit 0 if up and running jobs, else 1
#   bash slurm/sge.sh env      shell lines for clients: eval "$(bash slurm/sge.sh env)"
#
# Must run as root (it installs packages and starts daemons). There is no systemd or init here,
# so the daemons are started directly; both daemonise themselves and write their own pid files.
# See slurm/SGE.md.
set -euo pipefail

readonly SGE_ROOT=/var/lib/gridengine
readonly SGE_CELL=default
readonly DRMAA_LIBRARY_PATH=/usr/lib/gridengine-drmaa/lib/libdrmaa.so.1.0
readonly PACKAGES=(gridengine-master gridengine-exec gridengine-client gridengine-drmaa1.0)
readonly QMASTER_SPOOL=/var/spool/gridengine/qmaster
readonly EXECD_SPOOL=/var/spool/gridengine/execd
readonly QUEUES=(all.q short.q)
readonly SHORT_Q_H_RT=60           # seconds; short.q exists for walltime tests
readonly READY_TIMEOUT=90          # seconds start waits for a job to run
readonly PROBE_NAME=sge-sh-probe   # job name of the readiness probe, so stale probes can be qdel'd
export SGE_ROOT SGE_CELL

HOST=$(hostname)
readonly HOST
# The daemons inherit the working directory: do not keep the caller's busy.
cd /

die() { echo "sge: $*" >&2; exit 1; }

# Run a command quietly; if it fails, die showing what it said.
run() {
  local out
  out=$("$@" 2>&1) || die "'$*' failed: $(tr '\n' ' ' <<<"$out")"
}

# ---------------------------------------------------------------------------------------------
# Installation

installed() {
  [[ -x /usr/lib/gridengine/sge_qmaster && -x /usr/lib/gridengine/sge_execd \
    && -x /usr/lib/gridengine/qconf && -e $DRMAA_LIBRARY_PATH \
    && -r $SGE_ROOT/$SGE_CELL/common/bootstrap ]]
}

install() {
  installed && return 0
  [[ $(id -u) == 0 ]] || die "Grid Engine is not installed and installing it needs root"
  # Without these answers the packages ask for the master host and leave the cell unconfigured;
  # gridengineconfig=true makes gridengine-master create the cell and the spool database.
  local pkg
  for pkg in gridengine-common gridengine-client gridengine-master; do
    printf '%s shared/%s %s %s\n' \
      "$pkg" gridenginemaster string "$HOST" \
      "$pkg" gridenginecell string "$SGE_CELL" \
      "$pkg" gridengineconfig boolean true
  done | debconf-set-selections
  local apt=(apt-get install -y -q --no-install-recommends "${PACKAGES[@]}")
  # The package lists of a fresh machine may be missing or stale: update once and retry.
  DEBIAN_FRONTEND=noninteractive "${apt[@]}" >/dev/null 2>&1 \
    || { apt-get update -q >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive "${apt[@]}" >/dev/null 2>&1; } \
    || die "apt-get install ${PACKAGES[*]} failed"
  installed || die "installed ${PACKAGES[*]} but the cell $SGE_ROOT/$SGE_CELL was not created"
}

# ---------------------------------------------------------------------------------------------
# Daemons


# The pid in a daemon's pid file if that process is alive and is that daemon (pids get reused).
daemon_pid() {
  local name=$1 pidfile=$2 pid
  [[ -r $pidfile ]] || return 1
  pid=$(<"$pidfile")
  [[ $pid =~ ^[0-9]+$ ]] && [[ $(cat "/proc/$pid/comm" 2>/dev/null) == "$name" ]] || return 1
  echo "$pid"
}
qmaster_pid() { daemon_pid sge_qmaster "$QMASTER_SPOOL/qmaster.pid"; }
# sge_execd names its spool directory after the reverse lookup of the host's address, which is
# "localhost" when the host name resolves to 127.0.0.1, not after $HOST: look in all of them.
execd_pid() {
  local pidfile
  for pidfile in "$EXECD_SPOOL"/*/execd.pid; do
    daemon_pid sge_execd "$pidfile" && return 0
  done
  return 1
}

# Wait up to $2 seconds for command $1 to succeed.
wait_for() {
  local check=$1 deadline=$((SECONDS + $2))
  until "$check" >/dev/null 2>&1; do
    ((SECONDS < deadline)) || return 1
    sleep 0.5
  done
}

qmaster_answers() { qconf -sh; }

start_qmaster() {
  if ! qmaster_pid >/dev/null; then
    run /usr/sbin/sge_qmaster
  fi
  wait_for qmaster_answers 30 || die "sge_qmaster does not answer (see $QMASTER_SPOOL/messages)"
}

start_execd() {
  qmaster_pid >/dev/null || die "sge_qmaster is not running"
  if ! execd_pid >/dev/null; then
    run /usr/sbin/sge_execd
  fi
  wait_for execd_pid 30 || die "sge_execd did not start (see $EXECD_SPOOL/*/messages)"
}

# SIGTERM a daemon, wait for it to exit, SIGKILL it if it does not.
stop_daemon() {
  local name=$1 pid
  pid=$("${name}_pid") || return 0
  kill -TERM "$pid" 2>/dev/null || return 0
  local deadline=$((SECONDS + 30))
  while kill -0 "$pid" 2>/dev/null; do
    if ((SECONDS >= deadline)); then
      kill -KILL "$pid" 2>/dev/null || true
      break
    fi
    sleep 0.2
  done
}

# ---------------------------------------------------------------------------------------------
# Configuration. Every step is "add, or overwrite if it exists", so it can be re-run; the -A/-M
# forms of qconf read files (its other forms open $EDITOR).

# When the host name resolves to 127.0.0.1 (as in containers), the address a client connects from
# resolves back to "localhost" and qmaster refuses it as an unknown host; aliasing the two fixes
# that. Must be in place before qmaster starts (it reads the file once).
write_host_aliases() {
  local file=$SGE_ROOT/$SGE_CELL/common/host_aliases
  [[ $HOST == localhost ]] && return 0
  grep -qx "$HOST localhost" "$file" 2>/dev/null || echo "$HOST localhost" >>"$file"
}

# The files given to qconf -A/-M go here (made by configure).
TMP=

# add_or_modify <show option> <name> <add option> <modify option> <file>
add_or_modify() {
  local show=$1 name=$2 add=$3 modify=$4 file=$5
  if qconf "$show" "$name" >/dev/null 2>&1; then run qconf "$modify" "$file"; else run qconf "$add" "$file"; fi
}

# Change "key value" lines of a qconf listing: set_keys <file> key=value...
set_keys() {
  local file=$1 kv
  shift
  for kv in "$@"; do
    sed -i -E "s|^${kv%%=*}[[:space:]].*|${kv%%=*} ${kv#*=}|" "$file"
  done
}

configure_global() {
  # -Mconf takes the configuration's name from the file name.
  local file=$TMP/global
  qconf -sconf global | sed -e '/^#/d' -e ':a;/\\$/{N;s/\\\n[[:space:]]*/ /;ba}' >"$file"
  # root's jobs are refused below min_uid/min_gid (1000 by default); CI and tests run as root.
  # accounting_flush_time=0 makes qacct see a job as soon as it ends (default: 15 s later).
  set_keys "$file" min_uid=0 min_gid=0 \
    "reporting_params=accounting=true reporting=false flush_time=00:00:15 joblog=false sharelog=00:00:00 accounting_flush_time=00:00:00"
  run qconf -Mconf "$file"
}

configure_scheduler() {
  local file=$TMP/sched
  qconf -ssconf >"$file"
  # A 1 s scheduling interval (default 15 s) makes jobs start within a second or two.
  set_keys "$file" schedule_interval=0:0:1
  run qconf -Msconf "$file"
}

configure_hosts() {
  local file=$TMP/$HOST
  cat >"$file" <<EOF
hostname $HOST
load_scaling NONE
complex_values NONE
user_lists NONE
xuser_lists NONE
projects NONE
xprojects NONE
usage_scaling NONE
report_variables NONE
EOF
  add_or_modify -se "$HOST" -Ae -Me "$file"
  qconf -ss 2>/dev/null | grep -qx "$HOST" || run qconf -as "$HOST"
  qconf -sh 2>/dev/null | grep -qx "$HOST" || run qconf -ah "$HOST"
}

configure_pe() {
  local file=$TMP/smp
  cat >"$file" <<EOF
pe_name            smp
slots              999
user_lists         NONE
xuser_lists        NONE
start_proc_args    NONE
stop_proc_args     NONE
allocation_rule    \$pe_slots
control_slaves     FALSE
job_is_first_task  TRUE
urgency_slots      min
accounting_summary FALSE
qsort_args         NONE
EOF
  add_or_modify -sp smp -Ap -Mp "$file"
}

# configure_queue <name> <h_rt>
configure_queue() {
  local name=$1 h_rt=$2 file=$TMP/$1 limit
  # load_thresholds NONE: on a busy CI machine the default np_load_avg=1.75 puts the queue in
  # alarm state and jobs stay pending.
  cat >"$file" <<EOF
qname                 $name
hostlist              $HOST
seq_no                0
load_thresholds       NONE
suspend_thresholds    NONE
nsuspend              1
suspend_interval      00:05:00
priority              0
min_cpu_interval      00:05:00
processors            UNDEFINED
qtype                 BATCH INTERACTIVE
ckpt_list             NONE
pe_list               smp
rerun                 FALSE
slots                 $(nproc)
tmpdir                /tmp
shell                 /bin/sh
prolog                NONE
epilog                NONE
shell_start_mode      posix_compliant
starter_method        NONE
suspend_method        NONE
resume_method         NONE
terminate_method      NONE
notify                00:00:60
owner_list            NONE
user_lists            NONE
xuser_lists           NONE
subordinate_list      NONE
complex_values        NONE
projects              NONE
xprojects             NONE
calendar              NONE
initial_state         default
s_rt                  INFINITY
h_rt                  $h_rt
EOF
  for limit in s_cpu h_cpu s_fsize h_fsize s_data h_data s_stack h_stack s_core h_core s_rss h_rss \
    s_vmem h_vmem; do
    printf '%-21s INFINITY\n' "$limit" >>"$file"
  done
  add_or_modify -sq "$name" -Aq -Mq "$file"
}

configure() {
  TMP=$(mktemp -d)
  trap 'rm -rf "$TMP"' EXIT
  configure_global
  configure_scheduler
  configure_hosts
  configure_pe
  configure_queue all.q INFINITY
  configure_queue short.q "$SHORT_Q_H_RT"
}

# ---------------------------------------------------------------------------------------------
# Health

# Every queue has an instance on this host with no state flag (u unknown, E error, d disabled,
# a alarm, s suspended...): the scheduler will start jobs there.
queues_ready() {
  local queue instance
  for queue in "${QUEUES[@]}"; do
    # Columns: queue@host qtype resv/used/tot load arch [states]
    instance=$(qstat -f -q "$queue" 2>/dev/null | awk -v q="$queue@" 'index($1, q) == 1 {print $1 ":" $6; exit}')
    [[ -n $instance && ${instance#*:} == "" ]] || return 1
  done
}

# Run a trivial job in every queue and wait for it to finish, for at most $1 seconds.
probe() {
  local deadline=$((SECONDS + $1)) queue left
  for queue in "${QUEUES[@]}"; do
    left=$((deadline - SECONDS))
    ((left > 0)) || return 1
    # -sync y returns the job's exit status; a job that never starts is left pending: qdel it.
    if ! timeout "$left" qsub -sync y -b y -N "$PROBE_NAME" -q "$queue" -o /dev/null -e /dev/null \
      true >/dev/null 2>&1; then
      qdel "$PROBE_NAME" >/dev/null 2>&1 || true
      return 1
    fi
  done
}

# Up: both daemons alive and the queues open. Prints why not on stdout. This does not run a job,
# so that it does not report "down" while the tests' own jobs fill every slot.
healthy() {
  if ! qmaster_pid >/dev/null; then echo "sge: down (sge_qmaster not running)"; return 1; fi
  if ! execd_pid >/dev/null; then echo "sge: down (sge_execd not running)"; return 1; fi
  if ! queues_ready; then echo "sge: down (queue missing or not open: qstat -f)"; return 1; fi
}

up_message() { echo "sge: up (queues: ${QUEUES[*]})"; }

# ---------------------------------------------------------------------------------------------
# Commands

cmd_start() {
  # Up already: still apply the configuration (idempotent, ~1 s), so the queues always have
  # what this script says (e.g. one slot per core of this machine).
  if installed && healthy >/dev/null; then configure; up_message; return 0; fi
  install
  write_host_aliases
  start_qmaster
  configure
  start_execd
  # The queue instances are in state "u" until execd's first load report reaches qmaster; then a
  # job really has to run in each queue.
  local deadline=$((SECONDS + READY_TIMEOUT)) why
  wait_for healthy "$READY_TIMEOUT" || { why=$(healthy) || die "${why#sge: } after ${READY_TIMEOUT} s"; }
  probe $((deadline - SECONDS)) \
    || die "a test job did not run within ${READY_TIMEOUT} s (see $QMASTER_SPOOL/messages, $EXECD_SPOOL/*/messages)"
  up_message
}

cmd_stop() {
  installed || { echo "sge: not installed"; return 0; }
  stop_daemon execd
  stop_daemon qmaster
  echo "sge: stopped"
}

cmd_status() {
  installed || { echo "sge: down (not installed)"; return 1; }
  healthy || return 1
  up_message
}

cmd_env() {
  # libdrmaa links libjemalloc, whose static TLS does not fit in glibc's default reserve when it is
  # dlopen'ed (python's drmaa does that): "cannot allocate memory in static TLS block". The
  # tunable enlarges the reserve; it must be in the environment when the process starts.
  local tunable=glibc.rtld.optional_static_tls=16384 tunables=${GLIBC_TUNABLES:-}
  [[ :$tunables: == *:glibc.rtld.optional_static_tls=* ]] || tunables=${tunables:+$tunables:}$tunable
  cat <<EOF
export SGE_ROOT=$SGE_ROOT
export SGE_CELL=$SGE_CELL
export DRMAA_LIBRARY_PATH=$DRMAA_LIBRARY_PATH
export GLIBC_TUNABLES=$tunables
EOF
}

case "${1:-}" in
  start) cmd_start ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  env) cmd_env ;;
  *) echo "usage: $0 start|stop|status|env" >&2; exit 2 ;;
esac

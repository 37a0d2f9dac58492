#!/usr/bin/env bash
# A throwaway one-node SLURM cluster on localhost, for CI and local tests of scripts/slurm/.
# All state, logs and sockets live under $SLURM_TEST_DIR (default /tmp/cifar2l-slurm); nothing
# is written to /etc except what apt installs. Run as root (Debian 12: slurm 22.05, munge).
#
#   scripts/slurm-local.sh install   # apt-get install slurmctld slurmd slurm-client munge
#   scripts/slurm-local.sh start     # write slurm.conf, start munged, slurmctld, slurmd; wait idle
#   scripts/slurm-local.sh stop      # stop only the daemons this script started (by pid)
#
# Clients need: export SLURM_CONF=$SLURM_TEST_DIR/slurm.conf
set -euo pipefail

T=${SLURM_TEST_DIR:-/tmp/cifar2l-slurm}
export SLURM_CONF=$T/slurm.conf
NODE=$(hostname -s)
NCPU=$(nproc)
# RealMemory above what slurmd detects drains the node ("Low RealMemory"): use 95% of MemTotal.
MEM=$(( $(free -m | awk '/^Mem:/{print $2}') * 95 / 100 ))
MSOCK=$T/munge/munge.socket

log() { echo "[slurm-local $(date +%T)] $*"; }

do_install() {
  if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v munged >/dev/null \
     && command -v sbatch >/dev/null; then
    log "slurm already installed"; return
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends slurmctld slurmd slurm-client munge >/dev/null
  log "installed $(dpkg-query -W -f='${Package} ${Version}  ' slurmctld slurmd munge)"
}

write_conf() {
  mkdir -p "$T"/{state,log} "$T/spool/slurmd-$NODE" "$T/munge"
  chmod 755 "$T" "$T/munge"   # munged wants o+x on the socket's folder
  cat > "$SLURM_CONF" <<CONF
ClusterName=cifar2l
SlurmctldHost=$NODE(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$MSOCK
SlurmctldPort=${SLURMCTLD_PORT:-6817}
SlurmdPort=${SLURMD_PORT:-6818}
StateSaveLocation=$T/state
SlurmdSpoolDir=$T/spool/slurmd-%n
SlurmctldPidFile=$T/slurmctld.pid
SlurmdPidFile=$T/slurmd-%n.pid
SlurmctldLogFile=$T/log/slurmctld.log
SlurmdLogFile=$T/log/slurmd.log
MailProg=/bin/true
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobCompType=jobcomp/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# Without a default, a job without --mem gets the whole node and array tasks run one at a time.
DefMemPerCPU=$(( MEM / NCPU ))
ReturnToService=2
MpiDefault=none
SwitchType=switch/none
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$NCPU RealMemory=$MEM State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF
}

start_bg() {  # start_bg NAME CMD... : a daemon in the foreground, backgrounded, pid recorded
  local name=$1; shift
  "$@" >"$T/log/$name.out" 2>&1 &
  echo $! >"$T/$name.bgpid"
  log "started $name (pid $!)"
}

wait_for() {  # wait_for WHAT TENTHS CMD...
  local what=$1 n=$2; shift 2
  for _ in $(seq "$n"); do "$@" >/dev/null 2>&1 && return 0; sleep 0.1; done
  log "timeout waiting for $what"; tail -n 20 "$T"/log/*; return 1
}

do_start() {
  write_conf
  [ -f "$T/munge/munge.key" ] || mungekey --create --keyfile="$T/munge/munge.key"
  chmod 600 "$T/munge/munge.key"
  start_bg munged munged -F --socket="$MSOCK" --key-file="$T/munge/munge.key" \
    --log-file="$T/munge/munged.log" --pid-file="$T/munge/munged.pid" \
    --seed-file="$T/munge/munged.seed"
  wait_for munged 50 test -S "$MSOCK"
  start_bg slurmctld slurmctld -D -f "$SLURM_CONF"
  wait_for slurmctld 100 scontrol ping
  start_bg slurmd slurmd -D -f "$SLURM_CONF" -N "$NODE"
  wait_for "node $NODE idle" 300 bash -c "[ \"\$(sinfo -h -n $NODE -o %t)\" = idle ]"
  log "cluster up: $(sinfo -h -o '%P %D %t %c')"
}

do_stop() {
  # Let jobs and their slurmstepd finish first, so none lingers retrying a stopped slurmctld.
  if [ -f "$T/slurmctld.bgpid" ]; then
    for _ in $(seq 100); do
      [ -z "$(squeue -h 2>/dev/null)" ] && \
        ! compgen -G "$T/spool/slurmd-$NODE/${NODE}_*" >/dev/null && break
      sleep 0.1
    done
  fi
  for name in slurmd slurmctld munged; do   # reverse start order; only our own pids
    f="$T/$name.bgpid"; [ -f "$f" ] || continue
    pid=$(cat "$f")
    if kill -0 "$pid" 2>/dev/null; then
      kill "$pid"
      for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
      log "stopped $name (pid $pid)"
    fi
    rm -f "$f"
  done
}

case ${1:-} in
  install) do_install ;;
  start) do_start ;;
  stop) do_stop ;;
  *) echo "usage: $0 {install|start|stop}" >&2; exit 2 ;;
esac

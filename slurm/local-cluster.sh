#!/usr/bin/env bash
# A single-node Slurm cluster on this Debian / Ubuntu machine, for trying ablate's Slurm path
# without a cluster, and for CI. Needs root. Accounting runs (slurmdbd on a private MariaDB on
# 127.0.0.1:3307) because submitit reads job states through sacct.
#
#   slurm/local-cluster.sh start    install what is missing, write the configs, start the daemons
#   slurm/local-cluster.sh status   the daemons this script started, and sinfo
#   slurm/local-cluster.sh stop     stop exactly the daemons this script started
#
# It writes /etc/slurm/slurm.conf and /etc/slurm/slurmdbd.conf (the clients read those), and keeps
# its state, logs and pid files under $ABLATE_SLURM_DIR (default /var/lib/ablate-slurm).
set -euo pipefail

DIR=${ABLATE_SLURM_DIR:-/var/lib/ablate-slurm}
DB_PORT=${ABLATE_SLURM_DB_PORT:-3307}
CLUSTER=ablate
HOST=$(hostname -s)

die() { echo "local-cluster: $*" >&2; exit 1; }
pid_alive() { [ -f "$DIR/$1.pid" ] && kill -0 "$(cat "$DIR/$1.pid")" 2>/dev/null; }

install_missing() {
    local need=()
    command -v slurmctld >/dev/null || need+=(slurm-wlm)
    command -v munged >/dev/null || need+=(munge)
    command -v slurmdbd >/dev/null || need+=(slurmdbd)
    command -v mariadbd >/dev/null || need+=(mariadb-server)
    if [ ${#need[@]} -gt 0 ]; then
        echo "installing ${need[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
    fi
}

wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...
    local limit=$1 what=$2; shift 2
    for _ in $(seq "$limit"); do "$@" >/dev/null 2>&1 && return 0; sleep 1; done
    die "$what did not come up within ${limit}s (logs in $DIR)"
}

start_munge() {
    pid_alive munged && return 0
    mkdir -p /run/munge && chown munge:munge /run/munge
    [ -f /etc/munge/munge.key ] || { mungekey --create 2>/dev/null || /usr/sbin/create-munge-key -f; chown munge:munge /etc/munge/munge.key; }
    runuser -u munge -- /usr/sbin/munged --pid-file=/run/munge/ablate-munged.pid --force
    wait_for 10 munged test -f /run/munge/ablate-munged.pid
    cp /run/munge/ablate-munged.pid "$DIR/munged.pid"
}

start_mariadb() {
    pid_alive mariadbd && return 0
    local data=$DIR/mysql run=$DIR/mysql-run
    mkdir -p "$run" && chown mysql:mysql "$run"
    if [ ! -d "$data/mysql" ]; then
        mkdir -p "$data" && chown mysql:mysql "$data"
        mariadb-install-db --user=mysql --datadir="$data" --auth-root-authentication-method=socket >"$DIR/mariadb-install.log" 2>&1
    fi
    runuser -u mysql -- mariadbd --datadir="$data" --port="$DB_PORT" --bind-address=127.0.0.1 \
        --socket="$run/mysqld.sock" --pid-file="$run/mariadbd.pid" --skip-name-resolve >"$DIR/mariadbd.log" 2>&1 &
    wait_for 30 mariadb mariadb --socket="$run/mysqld.sock" -e "select 1"
    cp "$run/mariadbd.pid" "$DIR/mariadbd.pid"
    mariadb --socket="$run/mysqld.sock" -e "CREATE DATABASE IF NOT EXISTS slurm_acct_db;
        CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY 'ablate-local';
        GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1'; FLUSH PRIVILEGES;"
}

write_configs() {
    mkdir -p "$DIR/state" "$DIR/spool" /etc/slurm
    local node mem
    node=$(slurmd -C | head -1)
    mem=$(echo "$node" | sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p')
    node=$(echo "$node" | sed "s/RealMemory=[0-9]*/RealMemory=$((mem * 9 / 10))/; s/^NodeName=[^ ]*/NodeName=$HOST/")
    cat >/etc/slurm/slurm.conf <<EOF
# written by ablate's slurm/local-cluster.sh
ClusterName=$CLUSTER
SlurmctldHost=$HOST
SlurmUser=root
AuthType=auth/munge
AuthInfo=cred_expire=10
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/slurmctld.log
SlurmdLogFile=$DIR/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
DefMemPerCPU=1024
ReturnToService=2
MpiDefault=none
SchedulerParameters=sched_interval=5,bf_interval=5
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
$node State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
    cat >/etc/slurm/slurmdbd.conf <<EOF
# written by ablate's slurm/local-cluster.sh
AuthType=auth/munge
DbdHost=localhost
SlurmUser=root
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=ablate-local
StorageLoc=slurm_acct_db
LogFile=$DIR/slurmdbd.log
PidFile=$DIR/slurmdbd.pid
EOF
    chmod 600 /etc/slurm/slurmdbd.conf
}

start() {
    [ "$(id -u)" = 0 ] || die "needs root (it starts munged, MariaDB and the Slurm daemons)"
    install_missing
    mkdir -p "$DIR"
    start_munge
    start_mariadb
    write_configs
    pid_alive slurmdbd || { slurmdbd; wait_for 30 slurmdbd sacctmgr -n list cluster; }
    sacctmgr -n list cluster format=cluster | grep -qw "$CLUSTER" || sacctmgr -i add cluster "$CLUSTER" >/dev/null
    pid_alive slurmctld || slurmctld
    wait_for 30 slurmctld scontrol ping
    pid_alive slurmd || slurmd
    wait_for 60 "the node" bash -c "sinfo -h -o %T | grep -qE 'idle|mixed|allocated'"
    echo "local Slurm cluster '$CLUSTER' is up: $(sinfo -h -o '%P %D %T %c CPUs %m MB')"
}

stop() {
    local name
    for name in slurmd slurmctld slurmdbd mariadbd munged; do
        if pid_alive "$name"; then
            kill "$(cat "$DIR/$name.pid")" && echo "stopped $name"
            for _ in $(seq 20); do pid_alive "$name" || break; sleep 0.5; done
        fi
        rm -f "$DIR/$name.pid"
    done
}

status() {
    local name up=0
    for name in munged mariadbd slurmdbd slurmctld slurmd; do
        if pid_alive "$name"; then echo "$name: running (pid $(cat "$DIR/$name.pid"))"; up=$((up + 1)); else echo "$name: stopped"; fi
    done
    [ "$up" = 5 ] && sinfo
    [ "$up" = 5 ]
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    status) status ;;
    *) die "usage: $0 start|stop|status" ;;
esac

#!/usr/bin/env bash
# clamd, rspamd and Redis from Debian's packages, run on loopback as content scanners for
# tests and benchmarks. Nothing is downloaded and no lookup leaves the machine.
#
#   scanners.sh start DIR [clamd|rspamd]  configure and start clamd, rspamd (with its Redis) or
#                                         all under DIR; prints their ports as JSON
#   scanners.sh stop DIR [clamd|rspamd]   stop one of them, or all
#
# clamd: a signature database of our own, KUBEMAIL-MALWARE-TEST anywhere in a file (attachments
#   too, once clamd has decoded them) is Kubemail.Test.Malware.
# rspamd: Debian's configuration with its workers on free ports (normal worker for /checkv2,
#   controller, and the proxy in milter mode for Postfix), its DNS pointed at a closed loopback
#   port, the network modules off, Redis for the Bayes classifier, the controller's learning
#   behind a password (printed), and one rule of our own: a Subject with "cheap pills" scores
#   60, which the actions here make "add header" (50) but not "reject" (150). GTUBE is rejected.
set -euo pipefail

cmd=${1:?usage: scanners.sh start|stop DIR}
dir=$(realpath -m "${2:?usage: scanners.sh start|stop DIR}")
only=${3:-}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'; }
answers() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Stops the process in a pid file and waits until it is gone: SIGTERM first (rspamd's main
# process takes its workers with it; after a SIGKILL they would go on serving).
stop_pid() {
    local file=$1 pid
    [[ -f $file ]] || return 0
    pid=$(cat "$file" 2>/dev/null || true)
    rm -f "$file"
    [[ -n $pid ]] || return 0
    kill -TERM "$pid" 2>/dev/null || return 0
    for _ in $(seq 1 100); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
}

if [[ $cmd == stop ]]; then
    if [[ -z $only || $only == clamd ]]; then stop_pid "$dir/clamd/clamd.pid"; fi
    if [[ -z $only || $only == rspamd ]]; then
        stop_pid "$dir/rspamd/run/rspamd.pid"
        # Its workers hold the ports until they have gone too.
        if [[ -f $dir/ports.json ]]; then
            port=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["rspamd"])' "$dir/ports.json")
            for _ in $(seq 1 100); do answers "$port" || break; sleep 0.1; done
        fi
        stop_pid "$dir/redis/redis.pid"
    fi
    exit 0
fi
[[ $cmd == start ]] || { echo "scanners.sh: unknown command $cmd" >&2; exit 2; }
for tool in clamd rspamd redis-server; do
    command -v "$tool" >/dev/null || { echo "scanners.sh: $tool is missing (apt-get install clamav-daemon rspamd redis-server)" >&2; exit 1; }
done
mkdir -p "$dir/clamd/db" "$dir/rspamd/db" "$dir/rspamd/run" "$dir/redis"
clamd_port=null; redis_port=null; rspamd_port=null; controller_port=null; proxy_port=null; password=

# --- clamd -------------------------------------------------------------------------------------
start_clamd() {
clamd_port=$(free_port)
hex=$(printf 'KUBEMAIL-MALWARE-TEST' | od -An -tx1 | tr -d ' \n')
echo "Kubemail.Test.Malware:0:*:$hex" > "$dir/clamd/db/kubemail.ndb"
cat > "$dir/clamd/clamd.conf" <<CF
Foreground no
TCPSocket $clamd_port
TCPAddr 127.0.0.1
DatabaseDirectory $dir/clamd/db
LogFile $dir/clamd/clamd.log
PidFile $dir/clamd/clamd.pid
StreamMaxLength 10M
CF
clamd -c "$dir/clamd/clamd.conf" </dev/null >/dev/null 2>&1 || { cat "$dir/clamd/clamd.log" >&2 2>/dev/null; echo "scanners.sh: clamd did not start" >&2; exit 1; }
}

# --- rspamd, with Redis ------------------------------------------------------------------------
start_rspamd() {
redis_port=$(free_port)
redis-server --bind 127.0.0.1 --port "$redis_port" --save '' --appendonly no \
    --daemonize yes --pidfile "$dir/redis/redis.pid" --logfile "$dir/redis/redis.log" --dir "$dir/redis" >/dev/null
rspamd_port=$(free_port); controller_port=$(free_port); proxy_port=$(free_port)
conf="$dir/rspamd/conf"
rm -rf "$conf"
cp -r /etc/rspamd "$conf"
password=learn-$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')
cat > "$conf/override.d/worker-normal.inc" <<CF
bind_socket = "127.0.0.1:$rspamd_port";
count = 1;
CF
cat > "$conf/override.d/worker-controller.inc" <<CF
bind_socket = "127.0.0.1:$controller_port";
count = 1;
password = "$password";
enable_password = "$password";
# Not loopback (Debian trusts it): every client must give the password.
secure_ip = "192.0.2.1";
CF
cat > "$conf/override.d/worker-proxy.inc" <<CF
bind_socket = "127.0.0.1:$proxy_port";
count = 1;
milter = yes;
timeout = 120s;
upstream "local" {
  default = yes;
  self_scan = yes;
}
CF
echo "servers = \"127.0.0.1:$redis_port\";" > "$conf/local.d/redis.conf"
printf 'type = "file";\nfilename = "%s";\nlevel = "error";\n' "$dir/rspamd/rspamd.log" > "$conf/override.d/logging.inc"
echo 'dns { nameserver = ["127.0.0.1:1"]; timeout = 0.1s; retransmits = 1; }' > "$conf/override.d/options.inc"
printf 'reject = 150;\nadd_header = 50;\ngreylist = null;\nrewrite_subject = null;\n' > "$conf/override.d/actions.conf"
echo 'KUBEMAIL_SPAMMY { type = "header"; header = "Subject"; regexp = true; map = "${LOCAL_CONFDIR}/kubemail-spammy.map"; score = 60.0; }' > "$conf/local.d/multimap.conf"
echo '/cheap pills/i' > "$conf/kubemail-spammy.map"
for module in fuzzy_check rbl asn phishing url_redirector reputation; do
    echo 'enabled = false;' > "$conf/override.d/$module.conf"
done
# -i: the workers keep the caller's user (a test's directory is private to it).
rspamd -i -c "$conf/rspamd.conf" --var="CONFDIR=$conf" --var="LOCAL_CONFDIR=$conf" \
    --var="DBDIR=$dir/rspamd/db" --var="RUNDIR=$dir/rspamd/run" --var="LOGDIR=$dir/rspamd" \
    -p "$dir/rspamd/run/rspamd.pid" </dev/null >"$dir/rspamd/start.log" 2>&1 \
    || { cat "$dir/rspamd/start.log" "$dir/rspamd/rspamd.log" >&2 2>/dev/null; echo "scanners.sh: rspamd did not start" >&2; exit 1; }
}

started=()
if [[ -z $only || $only == clamd ]]; then start_clamd; started+=(clamd); fi
if [[ -z $only || $only == rspamd ]]; then start_rspamd; started+=(rspamd controller proxy redis); fi

# --- ready when each answers -------------------------------------------------------------------
ping_clamd() { python3 - "$clamd_port" <<'PY'
import socket, sys
try:
    s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=2)
    s.sendall(b"zPING\0")
    sys.exit(0 if s.recv(16).startswith(b"PONG") else 1)
except OSError:
    sys.exit(1)
PY
}
for what in "${started[@]}"; do
    for i in $(seq 1 600); do
        case $what in
            clamd) ping_clamd && break ;;
            rspamd) answers "$rspamd_port" && break ;;
            controller) answers "$controller_port" && break ;;
            proxy) answers "$proxy_port" && break ;;
            redis) answers "$redis_port" && break ;;
        esac
        if [[ $i == 600 ]]; then
            cat "$dir/clamd/clamd.log" "$dir/rspamd/rspamd.log" >&2 2>/dev/null || true
            echo "scanners.sh: $what did not answer within 60 s" >&2
            exit 1
        fi
        sleep 0.1
    done
done
printf '{"clamd":%s,"rspamd":%s,"controller":%s,"proxy":%s,"redis":%s,"controllerPassword":"%s"}\n' \
    "$clamd_port" "$rspamd_port" "$controller_port" "$proxy_port" "$redis_port" "$password" | tee "$dir/ports.json"

# Tears the test node down completely: its pods' processes (by cgroup), every process in its
# network namespace (control plane, containerd, shims, kubelet, kube-proxy, bridges), its
# cgroups, its network namespace and its directory. Idempotent. The harness writes it into the
# node's own root-only directory for the watcher that runs it when the test binary ends, and
# renders it afresh for a dead run's node (it never runs a file it finds).
#   teardown.sh [pods]   -- `pods`: only the pods' processes (the node's mounts going away)
DIR='{{DIR}}'
NETNS='{{NETNS}}'
CGROUP='{{CGROUP}}'
: "${DIR:?}" "${NETNS:?}" "${CGROUP:?}"
case "$DIR:$NETNS:$CGROUP" in
    */kubemail-node-*:kubemail-e2e-*:kubemail-*) ;;
    *) echo "teardown.sh: refusing to tear down $DIR $NETNS $CGROUP" >&2; exit 1 ;;
esac

kill_cgroup_procs() {
    for h in /sys/fs/cgroup/*/"$CGROUP"; do
        [ -d "$h" ] || continue
        find "$h" -name cgroup.procs -exec cat {} + 2>/dev/null
    done | sort -u | xargs -r kill -KILL 2>/dev/null
}
kill_cgroup_procs
pkill -KILL -f "containerd-shim-runc-v2 .*-address $DIR/containerd.sock" 2>/dev/null
[ "${1:-}" = pods ] && exit 0

ip netns pids "$NETNS" 2>/dev/null | xargs -r kill -KILL 2>/dev/null
i=0
while [ "$i" -lt 50 ]; do
    kill_cgroup_procs
    left=$(ip netns pids "$NETNS" 2>/dev/null)
    busy=""
    for h in /sys/fs/cgroup/*/"$CGROUP"; do
        [ -d "$h" ] && find "$h" -depth -type d -exec rmdir {} \; 2>/dev/null
        [ -d "$h" ] && busy=1
    done
    [ -z "$left" ] && [ -z "$busy" ] && break
    [ -n "$left" ] && echo "$left" | xargs -r kill -KILL 2>/dev/null
    i=$((i + 1))
    sleep 0.1
done
ip netns del "$NETNS" 2>/dev/null
rm -rf "$DIR"
exit 0

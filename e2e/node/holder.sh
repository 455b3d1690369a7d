# Holds the node's private mount namespace (started by the harness as `nsenter --net=NETNS
# unshare --mount --propagation slave sh holder.sh DIR`); containerd and the kubelet join it with
# nsenter. They write to fixed host paths: here those are tmpfs that only this namespace sees, so
# nothing is left on the machine.
set -eu
DIR=$1
# /sys as the node's network namespace sees it, with the host's cgroup hierarchies mounted again
# beneath it (a new sysfs hides the old one's submounts).
hierarchies=$(awk '$3 == "cgroup" { print $2, $4 }' /proc/self/mounts)
mount -t sysfs sysfs /sys
mount -t tmpfs -o mode=0755 cgroup /sys/fs/cgroup
echo "$hierarchies" | while read -r path options; do
    [ -n "$path" ] || continue
    mkdir -p "$path"
    mount -t cgroup -o "$options" cgroup "$path"
done
for path in /var/lib/kubelet /var/log/pods /var/log/containers /var/lib/cni /run/containerd /etc/cni; do
    mkdir -p "$path"
    mount -t tmpfs -o mode=0755 kubemail-node "$path"
done
echo $$ > "$DIR/holder.pid.tmp"
mv "$DIR/holder.pid.tmp" "$DIR/holder.pid"
# Stopping the node stops its pods: containers outlive containerd and the kubelet by design.
trap 'sh "$DIR/teardown.sh" pods; exit 0' TERM INT
while :; do
    sleep 1 &
    wait $! || true
done

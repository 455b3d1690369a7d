#!/usr/bin/env bash
# Assembles kubemail's two images, and the two a test node needs, without a registry or a
# container engine: image archives (`docker save` format) that `ctr images import` loads.
#
#   build-images.sh OUT_DIR
#
# The final stage of operator/Dockerfile and mail-runtime/Dockerfile is reproduced: the same base
# (distroless cc-debian12's contents, assembled here from the Debian 12 packages it is made of,
# its working directory), the binary at the path the Dockerfile copies it to, its USER and
# ENTRYPOINT read from the Dockerfile itself; a final stage with another base or an instruction
# this script does not model fails the build. The binary is the one built outside (the
# Dockerfile's `prebuilt` path). amd64 only, like the machines the tests run on.
#
# Environment:
#   KUBEMAIL_OPERATOR_BIN, KUBEMAIL_RUNTIME_BIN  the binaries to put in the images (required)
#   KUBEMAIL_TOOLS_BIN                           where build-control-plane.sh put coredns
#   KUBEMAIL_IMAGE_TAG                           tag of kubemail's images (default: dev)
#   KUBEMAIL_TOOLS_DIR                           cache root for the Debian packages
# Prints one line per image: `<archive path> <image name>`.
set -euo pipefail
cd "$(dirname "$0")/../.."

OUT=${1:?usage: build-images.sh OUT_DIR}
TAG=${KUBEMAIL_IMAGE_TAG:-dev}
CACHE_ROOT=${KUBEMAIL_TOOLS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/kubemail-tools}
DEBS="$CACHE_ROOT/debs"
# distroless/cc-debian12 is these packages' files (from Debian 12) plus a CA bundle and the
# nonroot user.
DISTROLESS=gcr.io/distroless/cc-debian12:nonroot
BASE_PACKAGES=(libc6 libgcc-s1 libgomp1 libstdc++6 libssl3 netbase tzdata)
COREDNS_VERSION=v1.14.7

log() { echo "build-images: $*" >&2; }
die() { echo "build-images: error: $*" >&2; exit 1; }

mkdir -p "$OUT" "$DEBS"
OUT=$(cd "$OUT" && pwd)
WORK=$(mktemp -d "$OUT/.work.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

sha() { sha256sum "$1" | cut -d' ' -f1; }

# A reproducible layer from a directory: sorted, owned by root unless the tree says otherwise,
# no timestamps.
layer() {
    local dir=$1 out=$2
    tar --sort=name --mtime=@0 --numeric-owner -C "$dir" -cf "$out" .
}

base_rootfs() {
    local root=$1
    [[ "$(cut -d. -f1 /etc/debian_version 2>/dev/null)" == 12 ]] ||
        die "the base is assembled from this machine's Debian packages, which must be Debian 12 (bookworm) like $DISTROLESS"

    (
        cd "$DEBS"
        local missing=()
        for p in "${BASE_PACKAGES[@]}"; do
            compgen -G "${p}_*.deb" >/dev/null || missing+=("$p")
        done
        if ((${#missing[@]})); then
            log "downloading ${missing[*]} from Debian"
            apt-get download -qq "${missing[@]}" >/dev/null 2>&1 || {
                apt-get update -qq && apt-get download -qq "${missing[@]}" >/dev/null
            } || die "apt-get download ${missing[*]} failed"
        fi
    )
    mkdir -p "$root"
    for p in "${BASE_PACKAGES[@]}"; do
        dpkg-deb -x "$(compgen -G "$DEBS/${p}_*.deb" | sort | tail -n 1)" "$root"
    done
    rm -rf "$root/usr/share/doc" "$root/usr/share/man" "$root/usr/share/lintian" "$root/usr/share/info"
    mkdir -p "$root/etc/ssl/certs" "$root/tmp" "$root/home/nonroot" "$root/root"
    [[ -f /etc/ssl/certs/ca-certificates.crt ]] || die "/etc/ssl/certs/ca-certificates.crt is missing (package ca-certificates)"
    cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"
    cat > "$root/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/sbin/nologin
nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin
nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin
EOF
    cat > "$root/etc/group" <<'EOF'
root:x:0:
nobody:x:65534:
nonroot:x:65532:
EOF
    echo 'hosts: files dns' > "$root/etc/nsswitch.conf"
    chmod 1777 "$root/tmp"
    chown 65532:65532 "$root/home/nonroot"
    chmod 0700 "$root/root"
}

# write_image NAME ARCHIVE USER ENTRYPOINT_JSON WORKDIR LAYER_DIR...
write_image() {
    local name=$1 archive=$2 user=$3 entrypoint=$4 workdir=$5; shift 5
    local dir="$WORK/image"
    rm -rf "$dir" && mkdir -p "$dir"
    local layers=() diff_ids=() i=0
    for src in "$@"; do
        layer "$src" "$dir/layer$i.tar"
        layers+=("\"layer$i.tar\"")
        diff_ids+=("\"sha256:$(sha "$dir/layer$i.tar")\"")
        i=$((i + 1))
    done
    local user_json=""
    [[ -n "$user" ]] && user_json="\"User\":\"$user\","
    local IFS=,
    cat > "$dir/config.json" <<EOF
{"architecture":"amd64","os":"linux","created":"1970-01-01T00:00:00Z","config":{${user_json}"Env":["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin","SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt"],"Entrypoint":${entrypoint},"WorkingDir":"${workdir}"},"rootfs":{"type":"layers","diff_ids":[${diff_ids[*]}]}}
EOF
    local config="$(sha "$dir/config.json").json"
    mv "$dir/config.json" "$dir/$config"
    echo "[{\"Config\":\"$config\",\"RepoTags\":[\"$name\"],\"Layers\":[${layers[*]}]}]" > "$dir/manifest.json"
    tar --sort=name --mtime=@0 --owner=0 --group=0 -C "$dir" -cf "$archive" .
    echo "$archive $name"
}

# The final stage of a Dockerfile: its base, USER, ENTRYPOINT and where it copies the binary.
# An instruction this script does not reproduce fails the build rather than being dropped.
final_stage() {
    local dockerfile=$1 field=$2
    tr -d '\r' < "$dockerfile" | awk -v field="$field" '
        /^FROM / { from = $2; user = ""; entry = ""; dest = ""; other = ""; next }
        /^USER / { user = $2; next }
        /^ENTRYPOINT / { sub(/^ENTRYPOINT /, ""); entry = $0; next }
        /^COPY --from=binary / { dest = $NF; next }
        /^(ARG|#)/ || /^[[:space:]]*$/ { next }
        { other = other $1 " " }
        END {
            if (field == "user") print user
            else if (field == "entrypoint") print entry
            else if (field == "from") print from
            else if (field == "other") print other
            else print dest
        }
    '
}

kubemail_image() {
    local component=$1 image=$2 binary=$3
    local dockerfile="$component/Dockerfile"
    [[ -x "$binary" ]] || die "$binary is not an executable (build it first)"
    local dest user entrypoint
    dest=$(final_stage "$dockerfile" dest)
    user=$(final_stage "$dockerfile" user)
    entrypoint=$(final_stage "$dockerfile" entrypoint)
    [[ -n "$dest" && -n "$user" && -n "$entrypoint" ]] || die "could not read the final stage of $dockerfile"
    [[ "$(final_stage "$dockerfile" from)" == "$DISTROLESS" ]] ||
        die "the final stage of $dockerfile is not FROM $DISTROLESS: teach base_rootfs its new base"
    [[ -z "$(final_stage "$dockerfile" other)" ]] ||
        die "the final stage of $dockerfile has instructions this script does not reproduce: $(final_stage "$dockerfile" other)"
    local top="$WORK/$component-binary"
    rm -rf "$top" && mkdir -p "$top$(dirname "$dest")"
    cp "$binary" "$top$dest"
    chmod 0755 "$top$dest"
    write_image "localhost/kubemail/$image:$TAG" "$OUT/$image.tar" "$user" "$entrypoint" /home/nonroot "$WORK/base" "$top"
}

# The pod sandbox: a process that sleeps until it is told to stop and reaps orphans.
pause_image() {
    local root="$WORK/pause"
    mkdir -p "$root"
    cat > "$WORK/pause.c" <<'EOF'
#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

static void stop(int sig) { (void)sig; _exit(0); }
static void reap(int sig) { (void)sig; while (waitpid(-1, NULL, WNOHANG) > 0) {} }

int main(void) {
    struct sigaction term = {.sa_handler = stop}, child = {.sa_handler = reap};
    sigaction(SIGINT, &term, NULL);
    sigaction(SIGTERM, &term, NULL);
    sigaction(SIGCHLD, &child, NULL);
    for (;;) pause();
}
EOF
    gcc -static -Os -s -o "$root/pause" "$WORK/pause.c" || die "building the pause program needs gcc and libc6-dev"
    write_image "localhost/kubemail/pause:3.10" "$OUT/pause.tar" "65535:65535" '["/pause"]' / "$root"
}

coredns_image() {
    local coredns="${KUBEMAIL_TOOLS_BIN:?KUBEMAIL_TOOLS_BIN is not set}/coredns"
    [[ -x "$coredns" ]] || die "$coredns is missing: run e2e/scripts/build-control-plane.sh"
    local root="$WORK/coredns"
    mkdir -p "$root"
    cp "$coredns" "$root/coredns"
    write_image "localhost/kubemail/coredns:$COREDNS_VERSION" "$OUT/coredns.tar" "65532:65532" '["/coredns"]' / "$WORK/base" "$root"
}

base_rootfs "$WORK/base"
kubemail_image operator kubemail-operator "${KUBEMAIL_OPERATOR_BIN:?KUBEMAIL_OPERATOR_BIN is not set}"
kubemail_image mail-runtime mail-runtime "${KUBEMAIL_RUNTIME_BIN:?KUBEMAIL_RUNTIME_BIN is not set}"
pause_image
coredns_image

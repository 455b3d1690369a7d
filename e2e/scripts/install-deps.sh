#!/usr/bin/env bash
# Installs what kubemail's build and tests need on a fresh machine of the polyglot kind (Debian,
# root, Go and Rust present). Idempotent: packages already there are not fetched again.
set -euo pipefail

log() { echo "install-deps: $*" >&2; }

for tool in go cargo; do
    command -v "$tool" >/dev/null || { log "error: $tool is not on PATH"; exit 1; }
done

# Debian packages the test suites use; the list grows with the protocol issues. prometheus is
# there for promtool (the chart's alert rules are tested with it); its daemon is never started.
PACKAGES=(ca-certificates git curl openssl python3 swaks fetchmail isync offlineimap3 dnsmasq-base postfix dovecot-imapd dovecot-pop3d dovecot-sieve clamav-daemon rspamd redis-server haproxy postgresql prometheus sieve-connect libio-socket-ssl-perl libnet-ssleay-perl libauthen-sasl-perl
    # the test node: container runtime, networking, and the static pause program
    containerd runc containernetworking-plugins iptables conntrack socat iproute2 util-linux gcc libc6-dev)
missing=()
for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
    log "apt-get install ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

cargo clippy --version >/dev/null 2>&1 || { log "rustup component add clippy"; rustup component add clippy; }
cargo fmt --version >/dev/null 2>&1 || { log "rustup component add rustfmt"; rustup component add rustfmt; }

# Python packages the tests use: an independent Prometheus text-format parser, aiosmtpd (the
# remote MX and smarthost in the outbound tests) and dkimpy (an independent DKIM verifier).
python3 -c 'import prometheus_client, aiosmtpd, dkim' 2>/dev/null ||
    python3 -m pip install -q prometheus-client aiosmtpd dkimpy

#!/usr/bin/env bash
# Postfix and Dovecot from Debian's packages, run on loopback as peers for tests and benchmarks.
#
#   peers.sh start DIR [PROFILE]  configure and start both under DIR; prints their ports as JSON
#   peers.sh stop DIR              stop both
#
# Postfix: SMTP with STARTTLS on one port, delivering to Maildir under DIR/postfix-mail.
# Dovecot: IMAP (STARTTLS and implicit TLS) and POP3 (STLS and implicit TLS), users from a
# passwd-file, mail in DIR/dovecot-mail. Both use a self-signed certificate made here.
#
# PROFILE (for the benchmarks):
#   defaults   the packages' defaults (the tests use these): Postfix delivers locally 2 at a time
#              and logs every message; Dovecot runs one login and one imap process per client.
#   tuned      as their operators run them in production: Postfix delivers locally 20 at a time
#              and logs only warnings (no log file: with no syslog daemon here, nothing, as
#              kubemail at `warn`); Dovecot with high-performance login (service_count = 0,
#              login processes with client_limit) and imap processes serving up to 10 clients each.
#   hibernate  tuned, and Dovecot hands IDLE sessions to imap-hibernate after 2 s.
set -euo pipefail

cmd=${1:?usage: peers.sh start|stop DIR [defaults|tuned|hibernate]}
dir=$(realpath -m "${2:?usage: peers.sh start|stop DIR [defaults|tuned|hibernate]}")
profile=${3:-defaults}
case $profile in defaults|tuned|hibernate) ;; *) echo "peers.sh: unknown profile $profile" >&2; exit 2 ;; esac

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'; }

stop() {
    if [[ -f "$dir/postfix/main.cf" ]]; then postfix -c "$dir/postfix" stop >/dev/null 2>&1 || true; fi
    if [[ -f "$dir/dovecot/dovecot.conf" ]]; then dovecot -c "$dir/dovecot/dovecot.conf" stop >/dev/null 2>&1 || true; fi
}

if [[ $cmd == stop ]]; then
    stop
    exit 0
fi
[[ $cmd == start ]] || { echo "peers.sh: unknown command $cmd" >&2; exit 2; }
for tool in postfix postconf dovecot openssl; do
    command -v "$tool" >/dev/null || { echo "peers.sh: $tool is missing (apt-get install postfix dovecot-imapd dovecot-pop3d openssl)" >&2; exit 1; }
done

mkdir -p "$dir"
openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=peer.example.test" \
    -keyout "$dir/tls.key" -out "$dir/tls.crt" >/dev/null 2>&1
chmod 600 "$dir/tls.key"

# --- Postfix: an extra instance with its own config, queue and data directories ---------------
smtp_port=$(free_port)
pf="$dir/postfix"
mkdir -p "$pf" "$dir/postfix-queue" "$dir/postfix-data" "$dir/postfix-mail"
cp /etc/postfix/master.cf "$pf/master.cf"
# The default instance must list an alternate config directory before `postfix -c` accepts it.
current=$(postconf -h alternate_config_directories 2>/dev/null || true)
case " $current " in *" $pf "*) ;; *) postconf -e "alternate_config_directories = $current $pf" ;; esac
cat > "$pf/main.cf" <<CF
compatibility_level = 3.6
myhostname = peer.example.test
mydomain = example.test
mydestination = example.test
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
queue_directory = $dir/postfix-queue
data_directory = $dir/postfix-data
home_mailbox = Maildir/
alias_maps =
alias_database =
local_recipient_maps =
mailbox_command =
smtpd_tls_cert_file = $dir/tls.crt
smtpd_tls_key_file = $dir/tls.key
smtpd_tls_security_level = may
smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination
mynetworks = 127.0.0.0/8
maillog_file = $dir/postfix.log
maillog_file_prefixes = $dir
syslog_name = postfix-peer
CF
if [[ $profile != defaults ]]; then
    cat >> "$pf/main.cf" <<CF
local_destination_concurrency_limit = 20
maillog_file =
CF
fi
# Only one smtpd, on the chosen port.
sed -i -E 's/^smtp( +)inet/#smtp\1inet/' "$pf/master.cf"
echo "127.0.0.1:$smtp_port inet n - n - - smtpd" >> "$pf/master.cf"
postfix -c "$pf" set-permissions >/dev/null 2>&1 || true
postfix -c "$pf" start </dev/null >/dev/null 2>&1 || { cat "$dir/postfix.log" >&2 2>/dev/null; echo "peers.sh: postfix did not start" >&2; exit 1; }

# --- Dovecot -----------------------------------------------------------------------------------
imap_port=$(free_port); imaps_port=$(free_port); pop3_port=$(free_port); pop3s_port=$(free_port)
dv="$dir/dovecot"
mkdir -p "$dv/run" "$dv/state" "$dir/dovecot-mail"
chown mail:mail "$dir/dovecot-mail"
chmod 755 "$dir" "$dv" "$dv/run"
echo "peer@example.test:{PLAIN}peer-password:::::" > "$dv/users"
cat > "$dv/dovecot.conf" <<CF
base_dir = $dv/run
state_dir = $dv/state
instance_name = kubemail-peer-$$
log_path = $dir/dovecot.log
protocols = imap pop3
listen = 127.0.0.1
ssl = yes
ssl_cert = <$dir/tls.crt
ssl_key = <$dir/tls.key
disable_plaintext_auth = yes
auth_mechanisms = plain
first_valid_uid = 1
mail_location = maildir:$dir/dovecot-mail/%u
# Room for the benchmarks' 1,000 concurrent IDLE sessions from one address.
default_process_limit = 2000
default_client_limit = 4000
default_vsz_limit = 0
protocol imap {
  mail_max_userip_connections = 2000
}
protocol pop3 {
  mail_max_userip_connections = 2000
}
passdb {
  driver = passwd-file
  args = $dv/users
}
userdb {
  driver = static
  args = uid=mail gid=mail home=$dir/dovecot-mail/%u
}
service imap-login {
  inet_listener imap {
    address = 127.0.0.1
    port = $imap_port
  }
  inet_listener imaps {
    address = 127.0.0.1
    port = $imaps_port
    ssl = yes
  }
}
service pop3-login {
  inet_listener pop3 {
    address = 127.0.0.1
    port = $pop3_port
  }
  inet_listener pop3s {
    address = 127.0.0.1
    port = $pop3s_port
    ssl = yes
  }
}
CF
if [[ $profile != defaults ]]; then
    cat >> "$dv/dovecot.conf" <<CF
service imap-login {
  service_count = 0
  client_limit = 4000
  process_min_avail = 2
  vsz_limit = 1G
}
service pop3-login {
  service_count = 0
  client_limit = 4000
  process_min_avail = 2
  vsz_limit = 1G
}
service imap {
  client_limit = 10
}
service anvil {
  client_limit = 8000
}
CF
fi
if [[ $profile == hibernate ]]; then
    cat >> "$dv/dovecot.conf" <<CF
imap_hibernate_timeout = 2s
service imap {
  unix_listener imap-master {
    user = dovenull
  }
  extra_groups = dovenull
}
service imap-hibernate {
  unix_listener imap-hibernate {
    mode = 0660
    group = dovenull
  }
}
CF
fi
dovecot -c "$dv/dovecot.conf" </dev/null >/dev/null 2>&1 || { cat "$dir/dovecot.log" >&2 2>/dev/null; echo "peers.sh: dovecot did not start" >&2; exit 1; }

# Wait until every port answers.
for port in "$smtp_port" "$imap_port" "$imaps_port" "$pop3_port" "$pop3s_port"; do
    for _ in $(seq 1 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
        sleep 0.1
    done
done
printf '{"smtp":%s,"imap":%s,"imaps":%s,"pop3":%s,"pop3s":%s,"user":"peer@example.test","password":"peer-password"}\n' \
    "$smtp_port" "$imap_port" "$imaps_port" "$pop3_port" "$pop3s_port"

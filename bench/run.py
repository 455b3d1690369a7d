"""kubemail beside Postfix and Dovecot, in one run, on loopback.

Started by bench/run.sh (which builds the release runtime and installs the peers). Every
workload runs against kubemail and against its peer with the same messages and the same
durability (fsync on, Maildir delivery); each figure is the median of --runs runs, with min and
max. Writes report.md and chart.png under --out.
"""
import argparse
import asyncio
import atexit
import imaplib
import json
import os
import random
import resource
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import time

ap = argparse.ArgumentParser()
ap.add_argument("--runtime", required=True)
ap.add_argument("--out", required=True)
ap.add_argument("--load", required=True, help="the load client (bench/load, kubemail-load)")
ap.add_argument("--runs", type=int, default=3)
ap.add_argument("--smtp-messages", type=int, default=10000)
ap.add_argument("--smtp-single", type=int, default=2000, help="messages in the 1-session run")
ap.add_argument("--mailbox", type=int, default=100000, help="messages in the IMAP/POP3 mailbox")
ap.add_argument("--idle", type=int, default=1000)
ap.add_argument("--idle-large", type=int, default=10000, help="IDLE sessions in kubemail's own large run")
ap.add_argument("--rspamd-messages", type=int, default=2000,
                help="messages in the SMTP ingest with rspamd (Debian's, e2e/peers/scanners.sh) on both")
ap.add_argument("--baseline-runtime", help="another mail-runtime binary (such as a build from before the "
                "inbound filters): its SMTP ingest with the filters off is measured beside this one's")
ap.add_argument("--filesystem", default="ext4", choices=["ext4", "disk"],
                help="ext4: every server's mail and queues on a fresh ext4 file system (with its journal, "
                "as mkfs makes it) on a loop device; disk: in --out as it is")
ap.add_argument("--peers", default="tuned,defaults",
                help="peer profiles (e2e/peers/peers.sh): tuned, defaults; the IDLE workload adds hibernate")
ap.add_argument("--workloads", default="smtp,rspamd,imap,pop3,idle,postgres",
                help="comma-separated: smtp, rspamd, imap, pop3, idle, postgres (and baseline with --baseline-runtime)")
args = ap.parse_args()
workloads = set(args.workloads.split(","))
profiles = [p for p in args.peers.split(",") if p]
if args.baseline_runtime:
    workloads.add("baseline")
os.makedirs(args.out, exist_ok=True)
work = os.path.join(args.out, "work")
shutil.rmtree(work, ignore_errors=True)
os.makedirs(work)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CTX = ssl.create_default_context()
CTX.check_hostname = False
CTX.verify_mode = ssl.CERT_NONE
results = []  # (workload, unit, kubemail [values], peer [values], better, target ratio)


def load(*argv):
    """Runs the load client (bench/load) once; its JSON answer."""
    try:
        out = subprocess.run([args.load, *argv], capture_output=True, timeout=900)
    except subprocess.TimeoutExpired:
        raise SystemExit("kubemail-load %s: no answer in 15 minutes" % argv[0])
    if out.returncode != 0:
        raise SystemExit("kubemail-load %s: %s" % (argv[0], out.stderr.decode().strip()))
    return json.loads(out.stdout)


def log(msg):
    print("bench: " + msg, flush=True)


def message(i, size=4096):
    head = ("From: sender%d@example.net\r\nTo: bench@example.test\r\nSubject: message %d%s\r\n"
            "Message-ID: <%d@bench.example.net>\r\nDate: Thu, 26 Nov 2026 10:00:00 +0000\r\n\r\n"
            % (i % 50, i, " needle" if i % 1000 == 7 else "", i))
    body = ("line %d of a benchmark message, the same in every server.\r\n" % i) * 80
    return (head + body)[:size].encode()


# --- the servers ------------------------------------------------------------------------------
# One Postfix and one Dovecot per profile: "tuned" as their operators run them in production,
# "defaults" as the packages come, "hibernate" (IDLE only) tuned with IMAP hibernation.
peer_sets = {}
# Whatever the run started is stopped when it ends, a failed run included: a failure used to
# leave the servers running.
started = []  # (what, how to stop it)


# A run stopped with SIGTERM stops what it started too.
signal.signal(signal.SIGTERM, lambda *_: sys.exit("bench: stopped"))


@atexit.register
def stop_everything():
    for what, stop in reversed(started):
        try:
            stop()
        except Exception as err:  # one that will not stop must not keep the rest running
            log("stopping %s: %s" % (what, err))


def stop_process(proc):
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


# The servers' files on a file system of their own, the same for all: a fresh ext4 with its
# journal, as a PersistentVolume is formatted. This machine's own disk is an ext4 without a
# journal, where making a file skips, one by one, every inode freed in the last minutes: after
# a run's 10,000 messages were removed, the next run's figures depended on that history.
filesystem = "the machine's disk (%s)" % subprocess.run(["findmnt", "-n", "-o", "FSTYPE", "-T", work], capture_output=True, text=True).stdout.strip()
if args.filesystem == "ext4":
    image = os.path.join(args.out, "fs.img")
    try:
        with open(image, "wb") as f:
            f.truncate(16 << 30)  # sparse: only what the run writes takes room
        subprocess.run(["mkfs.ext4", "-q", "-F", image], check=True, capture_output=True)
        subprocess.run(["mount", "-o", "loop", image, work], check=True, capture_output=True)
        filesystem = "a fresh ext4 (journal on, mkfs defaults) on a loop device"

        def unmount():
            if subprocess.call(["umount", work], stderr=subprocess.DEVNULL) != 0:
                subprocess.call(["umount", "-l", work])
            os.remove(image)
        started.append(("the file system", unmount))
    except (OSError, subprocess.CalledProcessError) as err:
        log("no loop-mounted ext4 (%s): the servers' files stay on the disk" % err)
        if os.path.exists(image):
            os.remove(image)
log("the servers' files: %s" % filesystem)

for profile in profiles + (["hibernate"] if "idle" in workloads else []):
    log("starting Postfix and Dovecot, %s (e2e/peers/peers.sh)" % profile)
    peers_dir = os.path.join(work, "peers-" + profile)
    peer_sets[profile] = json.loads(subprocess.check_output(
        ["bash", os.path.join(ROOT, "e2e/peers/peers.sh"), "start", peers_dir, profile]).decode().strip().splitlines()[-1])
    peer_sets[profile]["dir"] = peers_dir
    started.append(("peers " + profile, lambda d=peers_dir: subprocess.call(["bash", os.path.join(ROOT, "e2e/peers/peers.sh"), "stop", d])))
# Postfix delivers to a local user's ~/Maildir/: a user for the benchmark, home under the run.
home = os.path.join(work, "kmbench-home")
if subprocess.run(["id", "kmbench"], capture_output=True).returncode != 0:
    subprocess.check_call(["useradd", "--home-dir", home, "--no-create-home", "kmbench"])
else:
    subprocess.check_call(["usermod", "--home", home, "kmbench"])
os.makedirs(home, exist_ok=True)
shutil.chown(home, "kmbench", "kmbench")
# Every Postfix delivers to this Maildir (one of them at a time).
postfix_maildir = os.path.join(work, "kmbench-home", "Maildir")


def dovecot_maildir(profile):
    peer = peer_sets[profile]
    return os.path.join(peer["dir"], "dovecot-mail", peer["user"])


def start_kubemail(runtime, data):
    """`mail-runtime dev` writes a complete config (accounts, certificate, listeners on free
    ports) and stops; then `serve` runs on it, as a pod does. Returns (process, ports, config)."""
    init = subprocess.run([runtime, "dev", "--base-port", "0", "--stop-on-eof", "--data", data],
                          input=b"", stdout=subprocess.PIPE, env={**os.environ, "RUST_LOG": "warn"})
    info = json.loads(init.stdout.decode().splitlines()[0])
    config_path = os.path.join(data, "runtime.yaml")
    text = open(config_path).read()
    # Room for the IDLE workload (one client address) in both servers.
    room = max(args.idle, args.idle_large) + 2000
    text = text.replace("maxConnectionsPerIp: 50", "maxConnectionsPerIp: %d" % room).replace("maxConnections: 2000", "maxConnections: %d" % room)
    open(config_path, "w").write(text)
    return serve(runtime, config_path, info["ports"]["smtp"]), info, config_path


def serve(runtime, config_path, smtp_port):
    """`mail-runtime serve` on a config, once it answers."""
    proc = subprocess.Popen([runtime, "serve", "--config", config_path], stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "RUST_LOG": "warn"})
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", smtp_port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.1)
    time.sleep(1)
    return proc


def reconfigure(data, change):
    """Changes the runtime's config file and waits until the runtime serves it (live reload)."""
    import yaml
    path = os.path.join(data, "runtime.yaml")
    config = yaml.safe_load(open(path))
    change(config)
    revision = "bench-%d" % time.monotonic_ns()
    config["revision"] = revision
    open(path + ".tmp", "w").write(yaml.safe_dump(config))
    os.rename(path + ".tmp", path)
    status = os.path.join(data, "kubemail-runtime-status.json")
    for _ in range(400):
        try:
            if json.load(open(status)).get("revision") == revision:
                return
        except (OSError, ValueError):
            pass
        time.sleep(0.05)
    raise SystemExit("the runtime did not serve config %s" % revision)


log("starting kubemail (mail-runtime serve, release build, config from `mail-runtime dev`)")
data = os.path.join(work, "kubemail")
dev, info, config_path = start_kubemail(args.runtime, data)
started.append(("kubemail", lambda: stop_process(dev)))  # `dev` as it is then (IDLE restarts it)
ports = info["ports"]
account = info["accounts"][1]  # bob
idle_rss = None


def rss_at_start():
    global idle_rss
    idle_rss = rss_kib([dev.pid])
kubemail_maildir = os.path.join(data, "mail", "example.test", "bob")


def rss_kib(pids):
    total = 0
    for pid in pids:
        try:
            for line in open("/proc/%d/smaps_rollup" % pid):
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total


def process_tree(master):
    """A server's processes: its master and every process under it now."""
    children = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                ppid = int(open("/proc/%s/stat" % d).read().rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(d))
            except (OSError, IndexError, ValueError):
                pass
    out, todo = [], [master]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def dovecot_pids(profile):
    return process_tree(int(open(os.path.join(peer_sets[profile]["dir"], "dovecot", "run", "master.pid")).read()))


def count(maildir):
    n = 0
    for sub in ("new", "cur"):
        try:
            n += len(os.listdir(os.path.join(maildir, sub)))
        except FileNotFoundError:
            pass
    return n


def clear(maildir):
    for sub in ("new", "cur", "tmp"):
        shutil.rmtree(os.path.join(maildir, sub), ignore_errors=True)
    for f in ("dovecot-uidlist", "dovecot.index", "dovecot.index.log", "dovecot.index.cache", "kubemail-uidvalidity"):
        try:
            os.remove(os.path.join(maildir, f))
        except FileNotFoundError:
            pass


# The client's CPU share (this process and the tools it ran, user + system, over the wall
# time) in each measurement of the workload being measured, by server: a share near 100% means
# the client, not the server, bounds the figure.
cpu_log = {}


def measured(server, fn, *fn_args):
    """Runs one measurement against `server` and notes the client's CPU share in it."""
    def cpu():
        return sum(r.ru_utime + r.ru_stime for r in (resource.getrusage(resource.RUSAGE_SELF),
                                                     resource.getrusage(resource.RUSAGE_CHILDREN)))
    c, t = cpu(), time.monotonic()
    value = fn(*fn_args)
    cpu_log.setdefault(server, []).append((cpu() - c) / max(time.monotonic() - t, 1e-9))
    return value


def record(workload, unit, kube, peers, better, target):
    """`peers`: each peer's figures by its name (a profile, or "baseline")."""
    cpu = {server: statistics.median(shares) for server, shares in cpu_log.items()}
    results.append((workload, unit, kube, peers, better, target, cpu))
    log("%s: kubemail %s, %s %s" % (workload, fmt(kube), ", ".join("%s %s" % (p, fmt(v)) for p, v in peers.items()), unit))


def fmt(values):
    return "%.3g (%.3g-%.3g)" % (statistics.median(values), min(values), max(values))


rss_at_start()

# --- SMTP ingest ------------------------------------------------------------------------------
def smtp_source(port, rcpt, sessions, n):
    start = time.monotonic()
    subprocess.check_call(["smtp-source", "-s", str(sessions), "-m", str(n), "-l", "4096", "-c",
                           "-f", "sender@example.net", "-t", rcpt, "127.0.0.1:%d" % port], stdout=subprocess.DEVNULL)
    return time.monotonic() - start


def ingest(port, rcpt, maildir, sessions, n):
    clear(maildir)
    accepted = smtp_source(port, rcpt, sessions, n)
    start = time.monotonic()
    while count(maildir) < n:
        time.sleep(0.01)
        if time.monotonic() - start > 600:
            raise SystemExit("messages missing in %s: %d of %d" % (maildir, count(maildir), n))
    return n / accepted, n / (accepted + time.monotonic() - start)


if "smtp" in workloads:
    for sessions, n in ((20, args.smtp_messages), (1, args.smtp_single)):
        kube_rate, kube_stored = [], []
        peer_rate, peer_stored = {p: [] for p in profiles}, {p: [] for p in profiles}
        cpu_log.clear()
        for r in range(args.runs):
            log("SMTP ingest, %d sessions, run %d" % (sessions, r + 1))
            a, b = measured("kubemail", ingest, ports["smtp"], "bob@example.test", kubemail_maildir, sessions, n)
            kube_rate.append(a)
            kube_stored.append(b)
            for p in profiles:
                a, b = measured(p, ingest, peer_sets[p]["smtp"], "kmbench@example.test", postfix_maildir, sessions, n)
                peer_rate[p].append(a)
                peer_stored[p].append(b)
        label = "%d session%s" % (sessions, "" if sessions == 1 else "s")
        record("SMTP ingest, %s, %d x 4 KB: accepted" % (label, n), "msg/s", kube_rate, peer_rate, "higher", 2.5 if sessions == 20 else 1.5)
        record("SMTP ingest, %s: until all in the Maildir" % label, "msg/s", kube_stored, peer_stored, "higher", None)


    latency_message = os.path.join(work, "latency-message.eml")
    open(latency_message, "wb").write(message(1))

    def latencies(port, rcpt, n):
        out = load("smtp-latency", "--port", str(port), "--from", "sender@example.net", "--to", rcpt,
                   "--message", latency_message, "--messages", str(n))
        return out["p50_ms"], out["p99_ms"]


    k50, k99 = [], []
    p50, p99 = {p: [] for p in profiles}, {p: [] for p in profiles}
    cpu_log.clear()
    for r in range(args.runs):
        log("SMTP latency per message (kubemail-load, mail-send, 1 session), run %d" % (r + 1))
        a, b = measured("kubemail", latencies, ports["smtp"], "bob@example.test", 500)
        k50.append(a)
        k99.append(b)
        for p in profiles:
            a, b = measured(p, latencies, peer_sets[p]["smtp"], "kmbench@example.test", 500)
            p50[p].append(a)
            p99[p].append(b)
    record("SMTP latency per message, p50", "ms", k50, p50, "lower", None)
    record("SMTP latency per message, p99", "ms", k99, p99, "lower", 0.5)

    def syncs_per_message(pids, port, rcpt, maildir, n=200):
        """The calls that make data durable (fsync, fdatasync, sync_file_range, syncfs, msync)
        per message, made by the server's processes (and those they start) while n messages of
        one SMTP session go into the Maildir: what each server does to keep what it accepted."""
        clear(maildir)
        out = os.path.join(work, "strace-%d.txt" % port)
        tracer = subprocess.Popen(["strace", "-f", "-c", "-qq", "-o", out,
                                   "-e", "trace=fsync,fdatasync,sync_file_range,syncfs,msync"]
                                  + [a for pid in pids for a in ("-p", str(pid))],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(1)
        smtp_source(port, rcpt, 1, n)
        start = time.monotonic()
        while count(maildir) < n and time.monotonic() - start < 120:
            time.sleep(0.05)
        time.sleep(1)
        tracer.send_signal(signal.SIGINT)
        tracer.wait(timeout=30)
        calls = 0
        for line in open(out):
            fields = line.split()
            if len(fields) >= 5 and fields[-1] in ("fsync", "fdatasync", "sync_file_range", "syncfs", "msync"):
                calls += int(fields[3])
        return calls / n

    log("durability: fsync calls per message (strace), 1 session")
    kube_syncs = [syncs_per_message([dev.pid], ports["smtp"], "bob@example.test", kubemail_maildir)]
    peer_syncs = {}
    for p in profiles:
        master = int(open(os.path.join(peer_sets[p]["dir"], "postfix-queue", "pid", "master.pid")).read().strip())
        peer_syncs[p] = [syncs_per_message(process_tree(master), peer_sets[p]["smtp"], "kmbench@example.test", postfix_maildir)]
    cpu_log.clear()
    record("Durability: fsync calls per message, SMTP to Maildir", "calls", kube_syncs, peer_syncs, "neither", None)
clear(kubemail_maildir)
clear(postfix_maildir)

# --- SMTP ingest with rspamd ------------------------------------------------------------------
def scanned():
    """Messages rspamd says it scanned."""
    out = subprocess.run(["curl", "-sS", "--max-time", "5", "-H", "Password: %s" % scanners["controllerPassword"],
                          "http://127.0.0.1:%d/stat" % scanners["controller"]], capture_output=True)
    return json.loads(out.stdout or b"{}").get("scanned", 0)


if "rspamd" in workloads:
    log("starting rspamd and Redis (e2e/peers/scanners.sh)")
    scanners_dir = os.path.join(work, "scanners")
    started.append(("scanners", lambda: subprocess.call(["bash", os.path.join(ROOT, "e2e/peers/scanners.sh"), "stop", scanners_dir])))
    scanners = json.loads(subprocess.check_output(["bash", os.path.join(ROOT, "e2e/peers/scanners.sh"), "start", scanners_dir, "rspamd"]).decode().strip().splitlines()[-1])
    # The same rspamd for both: kubemail asks its normal worker (/checkv2); Postfix asks its
    # proxy in milter mode (self_scan), as docker-mailserver and mailcow wire Postfix.
    reconfigure(data, lambda c: c.setdefault("inbound", {}).update(
        {"rspamd": {"url": "http://127.0.0.1:%d" % scanners["rspamd"], "timeoutSeconds": 60}}))
    milter_peer = profiles[0]
    postfix_conf = os.path.join(peer_sets[milter_peer]["dir"], "postfix")
    milter = ["smtpd_milters = inet:127.0.0.1:%d" % scanners["proxy"], "milter_protocol = 6",
              "milter_default_action = tempfail", "milter_mail_macros = i {mail_addr} {client_addr} {client_name} {auth_authen}"]
    subprocess.check_call(["postconf", "-c", postfix_conf, "-e"] + milter)
    subprocess.check_call(["postfix", "-c", postfix_conf, "reload"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(2)
    n = args.rspamd_messages
    before = scanned()
    kube_rate, kube_stored, peer_rate, peer_stored = [], [], [], []
    cpu_log.clear()
    for r in range(args.runs):
        log("SMTP ingest with rspamd, 20 sessions, run %d" % (r + 1))
        a, b = measured("kubemail", ingest, ports["smtp"], "bob@example.test", kubemail_maildir, 20, n)
        kube_rate.append(a)
        kube_stored.append(b)
        a, b = measured(milter_peer, ingest, peer_sets[milter_peer]["smtp"], "kmbench@example.test", postfix_maildir, 20, n)
        peer_rate.append(a)
        peer_stored.append(b)
    checked = scanned() - before
    log("rspamd scanned %d messages (%d sent through both)" % (checked, 2 * n * args.runs))
    if checked < 2 * n * args.runs:
        raise SystemExit("rspamd scanned %d of %d messages: a server took mail unchecked" % (checked, 2 * n * args.runs))
    record("SMTP ingest with rspamd (peer: Postfix + rspamd's milter), 20 sessions, %d x 4 KB: accepted" % n,
           "msg/s", kube_rate, {milter_peer: peer_rate}, "higher", None)
    record("SMTP ingest with rspamd, 20 sessions: until all in the Maildir", "msg/s", kube_stored, {milter_peer: peer_stored}, "higher", None)
    reconfigure(data, lambda c: c["inbound"].pop("rspamd"))
    subprocess.check_call(["postconf", "-c", postfix_conf, "-X", "smtpd_milters"])
    subprocess.check_call(["postfix", "-c", postfix_conf, "reload"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    subprocess.call(["bash", os.path.join(ROOT, "e2e/peers/scanners.sh"), "stop", scanners_dir])
    clear(kubemail_maildir)
    clear(postfix_maildir)

# --- this build beside a baseline, filters off ------------------------------------------------
if "baseline" in workloads:
    log("starting the baseline runtime %s" % args.baseline_runtime)
    base_data = os.path.join(work, "baseline")
    base, base_info, _ = start_kubemail(args.baseline_runtime, base_data)
    started.append(("the baseline runtime", lambda: stop_process(base)))
    base_maildir = os.path.join(base_data, "mail", "example.test", "bob")
    for sessions, n in ((20, args.smtp_messages), (1, args.smtp_single)):
        now_rate, base_rate = [], []
        cpu_log.clear()
        for r in range(args.runs):
            log("SMTP ingest, filters off, this build and the baseline, %d sessions, run %d" % (sessions, r + 1))
            # Taking turns at going first: the disk's state after one run weighs on the next.
            order = [("kubemail", now_rate, ports["smtp"], kubemail_maildir),
                     ("baseline", base_rate, base_info["ports"]["smtp"], base_maildir)]
            for server, rates, port, maildir in (order if r % 2 == 0 else order[::-1]):
                rates.append(measured(server, ingest, port, "bob@example.test", maildir, sessions, n)[0])
        record("SMTP ingest, filters off, %d session%s, %d x 4 KB: accepted (peer: the baseline runtime %s)"
               % (sessions, "" if sessions == 1 else "s", n, os.path.basename(args.baseline_runtime)),
               "msg/s", now_rate, {"baseline": base_rate}, "higher", None)
    base.terminate()
    base.wait(timeout=10)
    clear(kubemail_maildir)

def restart_servers():
    """Every server started afresh, so the IDLE figures are not earlier workloads' leftovers."""
    global dev
    dev.terminate()
    dev.wait(timeout=10)
    dev = serve(args.runtime, config_path, ports["smtp"])
    for peer in peer_sets.values():
        conf = os.path.join(peer["dir"], "dovecot", "dovecot.conf")
        subprocess.call(["dovecot", "-c", conf, "stop"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        pid = os.path.join(peer["dir"], "dovecot", "run", "master.pid")
        for _ in range(100):
            if not os.path.exists(pid):
                break
            time.sleep(0.1)
        subprocess.check_call(["dovecot", "-c", conf], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", peer["imaps"]), timeout=1).close()
                break
            except OSError:
                time.sleep(0.1)


# --- the big mailbox --------------------------------------------------------------------------
SMALL = 5000
NEEDLES = sum(1 for i in range(1, args.mailbox + 1) if i % 1000 == 7)  # Subjects with "needle"
if "imap" in workloads or "pop3" in workloads:
    log("writing a %d-message mailbox into every store (same messages)" % args.mailbox)
    dovecot_maildirs = [dovecot_maildir(p) for p in profiles]
    for maildir in [kubemail_maildir] + dovecot_maildirs:
        clear(maildir)
        for sub in ("new", "cur", "tmp"):
            os.makedirs(os.path.join(maildir, sub), exist_ok=True)
    open(os.path.join(kubemail_maildir, "kubemail-uidvalidity"), "w").write("1\n")
    now = int(time.time())
    for i in range(1, args.mailbox + 1):
        body = message(i, size=2048 + (i % 7) * 300)
        base = "%d.M%dP1Q%d.bench" % (now, i, i)
        with open(os.path.join(kubemail_maildir, "cur", "%s,U=%d,S=%d:2,S" % (base, i, len(body))), "wb") as f:
            f.write(body)
        for maildir in dovecot_maildirs:
            with open(os.path.join(maildir, "cur", "%s,S=%d:2,S" % (base, len(body))), "wb") as f:
                f.write(body)
    # A 5,000-message folder beside it, for FETCH of bodies per message.
    for maildir in [kubemail_maildir] + dovecot_maildirs:
        for sub in ("new", "cur", "tmp"):
            os.makedirs(os.path.join(maildir, ".Small", sub), exist_ok=True)
    open(os.path.join(kubemail_maildir, ".Small", "kubemail-uidvalidity"), "w").write("1\n")
    for i in range(1, SMALL + 1):
        body = message(i, size=2048 + (i % 7) * 300)
        base = "%d.M%dP2Q%d.bench" % (now, i, i)
        with open(os.path.join(kubemail_maildir, ".Small", "cur", "%s,U=%d,S=%d:2,S" % (base, i, len(body))), "wb") as f:
            f.write(body)
        for maildir in dovecot_maildirs:
            with open(os.path.join(maildir, ".Small", "cur", "%s,S=%d:2,S" % (base, len(body))), "wb") as f:
                f.write(body)
    for maildir in dovecot_maildirs:
        subprocess.call(["chown", "-R", "mail:mail", os.path.dirname(maildir)])
servers = {"kubemail": (ports["imaps"], ports["pop3s"], account["address"], account["password"])}
for p, peer in peer_sets.items():
    servers[p] = (peer["imaps"], peer["pop3s"], peer["user"], peer["password"])


def imap_session(name):
    port, _, user, password = servers[name]
    m = imaplib.IMAP4_SSL("127.0.0.1", port, ssl_context=CTX)
    m.login(user, password)
    return m


def timed_imap(name, timed, setup=(), from_connect=False):
    """The load client logs in, answers `setup`, then sends `timed` together and reads to the
    last one's tagged OK over TLS, reading only the framing (lines and literals): the figure is
    the server's. Returns its counts: seconds, fetch (untagged FETCH responses), search (numbers
    in SEARCH answers)."""
    port, _, user, password = servers[name]
    argv = ["imap", "--port", str(port), "--user", user, "--password", password]
    argv += [a for command in setup for a in ("--setup", command)]
    argv += [a for command in timed for a in ("--timed", command)]
    return load(*argv, *(["--from-connect"] if from_connect else []))


def fetch_all(name):
    out = timed_imap(name, ["SELECT INBOX", "FETCH 1:* (UID FLAGS RFC822.SIZE)"], from_connect=True)
    assert out["fetch"] == args.mailbox, (name, out)
    return out["seconds"]


def fetch_bodies(name):
    """Microseconds per message of FETCH BODY.PEEK[] of a whole 5,000-message folder (login and
    SELECT included, a few microseconds per message)."""
    out = timed_imap(name, ["SELECT Small", "FETCH 1:* (BODY.PEEK[])"], from_connect=True)
    assert out["fetch"] == SMALL, (name, out)
    return out["seconds"] / SMALL * 1e6


def search(name):
    out = timed_imap(name, ["SEARCH HEADER Subject needle"], setup=["SELECT INBOX"])
    assert out["search"] == NEEDLES, (name, out)
    return out["seconds"]


def qresync_state(name):
    """(UIDVALIDITY, HIGHESTMODSEQ) the way a phone keeps them after its last sync."""
    m = imap_session(name)
    m.enable("QRESYNC")
    m.select("INBOX")
    state = int(m.untagged_responses["UIDVALIDITY"][-1]), int(m.untagged_responses["HIGHESTMODSEQ"][-1])
    m.logout()
    return state


flips = {}  # per server: flags go on in odd runs and off in even ones, 100 changes each time


def qresync(name):
    """A phone comes back: 100 flags were changed by another device since its last sync; the
    timed part is login + ENABLE QRESYNC + SELECT (QRESYNC ...) read to the tagged OK."""
    validity, highest = qresync_state(name)
    other = imap_session(name)
    other.select("INBOX")
    flips[name] = flips.get(name, 0) + 1
    sign = "+" if flips[name] % 2 else "-"
    step = max(1, args.mailbox // 100)
    for i in range(100):
        typ, _ = other.store(str(1 + i * step), sign + "FLAGS.SILENT", "(\\Flagged)")
        assert typ == "OK"
    other.logout()
    out = timed_imap(name, ["ENABLE QRESYNC", "SELECT INBOX (QRESYNC (%d %d))" % (validity, highest)],
                     from_connect=True)
    assert out["fetch"] == 100, (name, out)
    return out["seconds"]


def compare(label, fn, unit, better, target):
    """`fn(server)` against kubemail and each peer profile, `--runs` times, recorded."""
    kube, peer = [], {p: [] for p in profiles}
    cpu_log.clear()
    for r in range(args.runs):
        log("%s, run %d" % (label, r + 1))
        kube.append(measured("kubemail", fn, "kubemail"))
        for p in profiles:
            peer[p].append(measured(p, fn, p))
    record(label, unit, kube, peer, better, target)


if "imap" in workloads:
    for name in ["kubemail"] + profiles:  # warm-up: Dovecot builds its index, all fill the page cache
        fetch_all(name)
    # SEARCH cold: the first after every server started afresh (kubemail reads the messages;
    # Dovecot has its index on disk, as it would after a restart).
    restart_servers()
    cpu_log.clear()
    cold = {name: measured(name, search, name) for name in ["kubemail"] + profiles}
    record("IMAP SEARCH HEADER Subject, cold: the first after a restart (%d messages)" % args.mailbox, "s",
           [cold["kubemail"]], {p: [cold[p]] for p in profiles}, "lower", 0.5)
    for label, fn, unit, target in (("IMAP login + SELECT + FETCH 1:* (UID FLAGS RFC822.SIZE) (%d messages)" % args.mailbox, fetch_all, "s", 0.3),
                                    ("IMAP FETCH BODY.PEEK[] per message, read raw (a %d-message folder)" % SMALL, fetch_bodies, "us", None),
                                    ("IMAP SEARCH HEADER Subject, warm (%d messages)" % args.mailbox, search, "s", 1.0),
                                    ("IMAP QRESYNC resync after 100 flag changes: login + SELECT (QRESYNC) (%d messages)" % args.mailbox, qresync, "s", None)):
        compare(label, fn, unit, "lower", target)


def pop3_stat_uidl(name):
    _, port, user, password = servers[name]
    out = load("pop3", "--port", str(port), "--user", user, "--password", password)
    assert out["messages"] == args.mailbox, (name, out)
    return out["seconds"]


def pop3_retr(name):
    _, port, user, password = servers[name]
    out = load("pop3", "--port", str(port), "--user", user, "--password", password,
               "--retr", str(min(10000, args.mailbox)))
    return out["messages"] / out["seconds"]


if "pop3" in workloads:
    for label, fn, unit, better, target in (("POP3 login + STAT + UIDL", pop3_stat_uidl, "s", "lower", None),
                                            ("POP3 RETR of 10,000 messages", pop3_retr, "msg/s", "higher", 1.5)):
        compare(label + " (%d messages)" % args.mailbox, fn, unit, better, target)

# --- the PostgreSQL store ------------------------------------------------------------------------
# The same runtime with its mail in Debian's PostgreSQL (fsync on, its files beside the others'),
# beside the Maildir store and the peers: SMTP ingest, IMAP FETCH and SEARCH on the same mailbox
# (copied in by `mail-runtime migrate`), and 2 replicas behind HAProxy against 1.
if "postgres" in workloads:
    import glob

    bindir = sorted(glob.glob("/usr/lib/postgresql/*/bin"))[-1]
    pgdir = os.path.join(work, "postgres")
    os.makedirs(pgdir)
    as_pg = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    if as_pg:
        subprocess.check_call(["chown", "postgres", pgdir])
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        pg_port = probe.getsockname()[1]
    subprocess.check_call(as_pg + [bindir + "/initdb", "-D", pgdir + "/data", "-U", "kubemail", "--auth=trust",
                                   "-E", "UTF8"], stdout=subprocess.DEVNULL)
    subprocess.check_call(as_pg + [bindir + "/pg_ctl", "-w", "-D", pgdir + "/data", "-l", pgdir + "/log", "-o",
                                   "-p %d -c listen_addresses=127.0.0.1 -k %s -c max_connections=200" % (pg_port, pgdir),
                                   "start"], stdout=subprocess.DEVNULL)
    started.append(("PostgreSQL", lambda: subprocess.call(as_pg + [bindir + "/pg_ctl", "-D", pgdir + "/data", "-m",
                                                                   "immediate", "stop"], stdout=subprocess.DEVNULL)))
    pg_uri = "postgresql://kubemail@127.0.0.1:%d/postgres" % pg_port

    def psql(sql):
        return subprocess.run(["psql", "-At", "-h", "127.0.0.1", "-p", str(pg_port), "-U", "kubemail", "-d", "postgres",
                               "-c", sql], capture_output=True, text=True, check=True).stdout.strip()

    def start_on_db(name):
        proc = subprocess.Popen([args.runtime, "dev", "--base-port", "0", "--stop-on-eof", "--data",
                                 os.path.join(work, name), "--postgres", pg_uri],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, env={**os.environ, "RUST_LOG": "warn"})
        started.append((name, lambda: stop_process(proc)))
        return proc, json.loads(proc.stdout.readline())

    replica_a, on_db = start_on_db("kubemail-pg-a")
    db_bob = [a for a in on_db["accounts"] if a["address"] == "bob@example.test"][0]

    if "imap" in workloads:
        log("copying the %d-message mailbox into PostgreSQL (mail-runtime migrate)" % args.mailbox)
        uri_file = os.path.join(work, "pg-uri")
        open(uri_file, "w").write(pg_uri)
        start = time.monotonic()
        copied = json.loads(subprocess.run([args.runtime, "migrate", "--data", data, "--postgres-uri-file", uri_file],
                                           capture_output=True, check=True, env={**os.environ, "RUST_LOG": "warn"}
                                           ).stdout.decode().splitlines()[0])
        log("migrate: %s in %.1f s" % (copied, time.monotonic() - start))
        servers["kubemail-pg"] = (on_db["ports"]["imaps"], on_db["ports"]["pop3s"], db_bob["address"], db_bob["password"])
        for name in ("kubemail-pg", "kubemail"):
            fetch_all(name)  # warm-up
        cpu_log.clear()
        cold = {name: measured(name, search, name) for name in ("kubemail-pg", "kubemail")}
        record("PostgreSQL store: IMAP SEARCH HEADER Subject, the first on the copied mailbox (%d messages)" % args.mailbox,
               "s", [cold["kubemail-pg"]], {"maildir": [cold["kubemail"]]}, "lower", None)
        for label, fn in (("IMAP login + SELECT + FETCH 1:* (UID FLAGS RFC822.SIZE) (%d messages)" % args.mailbox, fetch_all),
                          ("IMAP SEARCH HEADER Subject, warm (%d messages)" % args.mailbox, search)):
            pg, md, peer = [], [], {p: [] for p in profiles}
            cpu_log.clear()
            for r in range(args.runs):
                log("PostgreSQL store: %s, run %d" % (label, r + 1))
                pg.append(measured("kubemail-pg", fn, "kubemail-pg"))
                md.append(measured("kubemail", fn, "kubemail"))
                for p in profiles:
                    peer[p].append(measured(p, fn, p))
            record("PostgreSQL store: " + label, "s", pg, {"maildir": md, **peer}, "lower", None)

    def db_count():
        return int(psql("SELECT count(*) FROM kubemail_messages m JOIN kubemail_folders f ON f.id = m.folder_id "
                        "WHERE f.mailbox = 'bob@example.test' AND f.name = 'INBOX'") or 0)

    def db_clear():
        psql("DELETE FROM kubemail_messages; DELETE FROM kubemail_blobs")

    def ingest_db(port, sessions, n):
        db_clear()
        accepted = smtp_source(port, "bob@example.test", sessions, n)
        start = time.monotonic()
        while db_count() < n:
            time.sleep(0.05)
            if time.monotonic() - start > 600:
                raise SystemExit("messages missing in PostgreSQL: %d of %d" % (db_count(), n))
        return n / accepted

    def maildir_ingest(sessions, n):
        return ingest(ports["smtp"], "bob@example.test", kubemail_maildir, sessions, n)[0]

    n = args.smtp_messages
    pg_rate, md_rate, peer_rate = [], [], {p: [] for p in profiles}
    cpu_log.clear()
    for r in range(args.runs):
        log("SMTP ingest into PostgreSQL, 20 sessions, run %d" % (r + 1))
        pg_rate.append(measured("kubemail-pg", ingest_db, on_db["ports"]["smtp"], 20, n))
        md_rate.append(measured("kubemail", maildir_ingest, 20, n))
        for p in profiles:
            peer_rate[p].append(measured(p, lambda: ingest(peer_sets[p]["smtp"], "kmbench@example.test",
                                                              postfix_maildir, 20, n)[0]))
    record("PostgreSQL store: SMTP ingest, 20 sessions, %d x 4 KB: accepted" % n, "msg/s", pg_rate,
           {"maildir": md_rate, **peer_rate}, "higher", None)
    clear(kubemail_maildir)
    clear(postfix_maildir)

    # Two replicas on one database against one, both behind HAProxy (round-robin, TCP).
    replica_b, on_db_b = start_on_db("kubemail-pg-b")

    def behind_haproxy(backends):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        cfg = os.path.join(work, "haproxy-%d.cfg" % port)
        open(cfg, "w").write("global\n  maxconn 2000\ndefaults\n  mode tcp\n  timeout connect 5s\n"
                             "  timeout client 120s\n  timeout server 120s\nfrontend smtp\n  bind 127.0.0.1:%d\n"
                             "  default_backend smtp\nbackend smtp\n  balance roundrobin\n%s" % (
                                 port, "".join("  server r%d 127.0.0.1:%d\n" % (i, b) for i, b in enumerate(backends))))
        proc = subprocess.Popen(["haproxy", "-db", "-f", cfg], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        started.append(("haproxy", lambda: stop_process(proc)))
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.1)
        return proc, port

    one_proxy, one_port = behind_haproxy([on_db["ports"]["smtp"]])
    two_proxy, two_port = behind_haproxy([on_db["ports"]["smtp"], on_db_b["ports"]["smtp"]])
    one, two = [], []
    cpu_log.clear()
    for r in range(args.runs):
        log("SMTP ingest into PostgreSQL through HAProxy, 1 and 2 replicas, run %d" % (r + 1))
        one.append(measured("1 replica", ingest_db, one_port, 20, n))
        two.append(measured("2 replicas", ingest_db, two_port, 20, n))
    record("PostgreSQL store: SMTP ingest through HAProxy, 20 sessions, 2 replicas (%d CPUs)" % os.cpu_count(),
           "msg/s", two, {"replica1": one}, "higher", None)
    stop_process(one_proxy)
    stop_process(two_proxy)
    stop_process(replica_b)
    db_clear()

    stop_process(replica_a)


# --- memory -----------------------------------------------------------------------------------
clear(kubemail_maildir)
for p in peer_sets:
    clear(dovecot_maildir(p))
    for sub in ("new", "cur", "tmp"):
        os.makedirs(os.path.join(dovecot_maildir(p), sub), exist_ok=True)
    subprocess.call(["chown", "-R", "mail:mail", os.path.dirname(dovecot_maildir(p))])


async def idle_clients(name, n):
    port, _, user, password = servers[name]
    conns = []

    async def tagged(reader, tag):
        """Reads to the tagged answer, which must be OK; a server that closes ends the run."""
        while True:
            line = await reader.readline()
            if not line:
                raise SystemExit("%s closed an IDLE client's connection before %s's answer" % (name, tag.decode()))
            if line.startswith(tag + b" "):
                if not line.startswith(tag + b" OK"):
                    raise SystemExit("%s answered an IDLE client: %r" % (name, line))
                return

    async def one(i):
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=CTX)
        await reader.readline()
        writer.write(b"a LOGIN %s %s\r\n" % (user.encode(), password.encode()))
        await tagged(reader, b"a")
        writer.write(b"b SELECT INBOX\r\n")
        await tagged(reader, b"b")
        writer.write(b"c IDLE\r\n")
        line = await reader.readline()
        assert line.startswith(b"+"), line
        conns.append(writer)

    # Paced: 20 logins at a time, as clients that reconnect after a restart spread out.
    for chunk in range(0, n, 20):
        await asyncio.gather(*(one(i) for i in range(chunk, min(n, chunk + 20))))
        await asyncio.sleep(0.02)
    await asyncio.sleep(5)  # past Dovecot's hibernation timeout (2 s), where it has one
    pids = [dev.pid] if name == "kubemail" else dovecot_pids(name)
    memory = rss_kib(pids)
    for w in conns:
        w.close()
    await asyncio.sleep(1)
    return memory


if "idle" in workloads:
    kube_mem, peer_mem = [], {p: [] for p in profiles + ["hibernate"]}
    cpu_log.clear()
    for r in range(args.runs):
        log("%d concurrent IDLE sessions, every server started afresh, run %d" % (args.idle, r + 1))
        restart_servers()
        kube_mem.append(asyncio.run(idle_clients("kubemail", args.idle)) / 1024)
        for p in peer_mem:
            peer_mem[p].append(asyncio.run(idle_clients(p, args.idle)) / 1024)
    record("Memory (PSS) of the whole server with %d IDLE sessions" % args.idle, "MiB", kube_mem, peer_mem, "lower", 0.1)
    if args.idle_large:
        log("%d concurrent IDLE sessions on kubemail, started afresh" % args.idle_large)
        restart_servers()
        cpu_log.clear()
        large = asyncio.run(idle_clients("kubemail", args.idle_large)) / 1024
        record("kubemail memory (PSS) with %d IDLE sessions" % args.idle_large, "MiB", [large], {}, "lower", None)
    cpu_log.clear()
    record("kubemail runtime idle memory at start (PSS)", "MiB", [idle_rss / 1024], {}, "lower", None)


dev.terminate()
dev.wait(timeout=10)
for peer in peer_sets.values():
    subprocess.call(["bash", os.path.join(ROOT, "e2e/peers/peers.sh"), "stop", peer["dir"]])

# --- the report -------------------------------------------------------------------------------
NAMES = {"tuned": "Postfix/Dovecot tuned", "defaults": "Postfix/Dovecot defaults",
         "hibernate": "Dovecot tuned + hibernation", "baseline": "baseline build",
         "maildir": "kubemail on Maildir", "replica1": "kubemail, 1 replica"}
columns = [p for p in ("maildir", "replica1", "tuned", "defaults", "hibernate", "baseline")
           if any(p in r[3] for r in results)]
lines = ["# kubemail beside Postfix and Dovecot", "",
         "One run on %s (%d CPUs), %s. Each figure: median of %d runs (min-max). Peers: Postfix (SMTP, "
         "Maildir delivery) and Dovecot (IMAP, POP3) from Debian's packages, started by "
         "e2e/peers/peers.sh, in each profile: *tuned* as their operators run them in production "
         "(Postfix: local delivery 20 at a time, no per-message log; Dovecot: high-performance login, "
         "imap processes serving up to 10 clients), *defaults* as the packages come (Postfix delivers "
         "2 at a time and logs every message; one Dovecot process per client), and for IDLE also "
         "*tuned + hibernation* (idle sessions handed to imap-hibernate after 2 s). kubemail: "
         "`mail-runtime serve`, release build, logging at warn. Every server's files on %s. TLS on IMAP and POP3 for all; durable "
         "for all: kubemail and Postfix fsync each message before the SMTP reply, Dovecot's Maildir "
         "writes go through its index. With rspamd: Debian's rspamd (e2e/peers/scanners.sh), asked by "
         "kubemail over /checkv2 and by the tuned Postfix through rspamd's proxy in milter mode. A "
         "baseline row's peer is the other kubemail build named in it, with the same workload. Targets "
         "are against the first peer column that has a figure. *PostgreSQL store* rows: the same runtime "
         "with its mail in Debian's PostgreSQL (fsync on, its files beside the others'), beside kubemail on "
         "Maildir and the peers in the same run; its 2-replica row is compared with 1 replica behind the "
         "same HAProxy." % (socket.gethostname(), os.cpu_count(), time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), args.runs, filesystem), "",
         "| workload | unit | kubemail | " + " | ".join("%s | kubemail / it" % NAMES[c] for c in columns) + " | target | met | client CPU |",
         "|" + "---|" * (6 + 2 * len(columns))]
ratios = []
for workload, unit, kube, peer, better, target, cpu in results:
    client = ", ".join("%s %.0f%%" % (server, share * 100) for server, share in cpu.items()) or "-"
    limit = 20 if workload.startswith("kubemail runtime idle memory") else 256 if workload.startswith("kubemail memory") else None
    if limit is not None:
        value = statistics.median(kube)
        lines.append("| %s | %s | %s | %s | < %d MiB | %s | %s |" % (workload, unit, fmt(kube), " | ".join(["-"] * 2 * len(columns)), limit, "yes" if value < limit else "no", client))
        continue
    cells, first = [], None
    for c in columns:
        if c not in peer:
            cells.append("- | -")
            continue
        ratio = statistics.median(kube) / statistics.median(peer[c])
        cells.append("%s | %.2fx" % (fmt(peer[c]), ratio))
        if first is None:
            first = ratio
    met = ""
    if target is not None and first is not None:
        met = "yes" if (first >= target if better == "higher" else first <= target) else "no"
    want = "" if target is None else ("%s %.1fx" % (">=" if better == "higher" else "<=", target))
    lines.append("| %s | %s | %s | %s | %s | %s | %s |" % (workload, unit, fmt(kube), " | ".join(cells), want, met, client))
    if first is not None and better != "neither":
        ratios.append((workload, first if better == "higher" else 1 / first))
open(os.path.join(args.out, "report.md"), "w").write("\n".join(lines) + "\n")
print("\n".join(lines))

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt

fig, ax = plt.subplots(figsize=(10, 0.5 * len(ratios) + 1.5))
names = [w[:70] for w, _ in ratios]
values = [r for _, r in ratios]
ax.barh(names, values, color=["#2a7" if v >= 1 else "#d55" for v in values])
ax.axvline(1.0, color="black", linewidth=1)
ax.set_xscale("log")
ax.set_xlabel("kubemail advantage (peer time / kubemail time, or kubemail rate / peer rate); > 1 is better")
ax.invert_yaxis()
fig.tight_layout()
fig.savefig(os.path.join(args.out, "chart.png"), dpi=120)
log("report: %s/report.md, chart: %s/chart.png" % (args.out, args.out))

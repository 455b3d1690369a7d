#!/usr/bin/env python3
"""Many IMAP sessions (imaplib) and SMTP deliveries (smtplib) on one mailbox at once, each
answer checked against what a server must never show. Prints one JSON line of figures and the
violations found; exits 1 when there is any.

usage: imap_stress.py HOST IMAPS_PORT SMTP_PORT USER PASSWORD SESSIONS SECONDS

What is checked (RFC 9051, RFC 2180):
- UIDVALIDITY of a folder never changes while it exists (every SELECT, every session);
- a UID is handed out once: APPENDUID and COPYUID never name a UID seen before in that folder;
- a UID's message never changes: each message carries a unique token, and every FETCH of a UID
  returns the token it had the first time (an expunged message is never served with other or
  empty content);
- no NO or BAD for commands that are valid whatever the others do (UID commands, APPEND,
  SELECT, NOOP, EXPUNGE);
- the server never drops a session;
- CONDSTORE (RFC 7162): one (UID, MODSEQ) pair always comes with the same flags (no change
  without a new mod-sequence), and a resync is complete: after STATUS said HIGHESTMODSEQ `h`,
  `UID FETCH 1:* (FLAGS) (CHANGEDSINCE s)` names every message whose change `m` has
  `s < m <= h`, with that change or a later one.
"""
import imaplib
import json
import random
import re
import smtplib
import ssl
import sys
import threading
import time
import uuid

HOST, IMAPS, SMTP, USER, PASSWORD = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
SESSIONS, SECONDS = int(sys.argv[6]), float(sys.argv[7])
FOLDERS = ["INBOX", "Stress"]
CTX = ssl._create_unverified_context()

lock = threading.Lock()
validity = {}  # folder -> UIDVALIDITY first seen
handed = {f: set() for f in FOLDERS}  # UIDs named by APPENDUID/COPYUID
tokens = {f: {} for f in FOLDERS}  # folder -> uid -> token
violations = []
counts = {"ops": 0, "appends": 0, "deliveries": 0, "expunges": 0, "stores": 0, "fetches": 0, "copies": 0, "moves": 0, "resyncs": 0}
pairs = {f: {} for f in FOLDERS}  # folder -> (uid, modseq) -> flags
deadline = time.time() + SECONDS


def violation(text):
    with lock:
        if len(violations) < 50:
            violations.append(text)


def count(name):
    with lock:
        counts[name] += 1
        counts["ops"] += 1


def check_ok(who, what, typ, data):
    if typ != "OK":
        violation("%s: %s answered %s %r" % (who, what, typ, data))
        return False
    return True


def note_validity(who, folder, m):
    found = m.untagged_responses.get("UIDVALIDITY") or []
    for v in found:
        v = int(v)
        with lock:
            first = validity.setdefault(folder, v)
        if v != first:
            violation("%s: UIDVALIDITY of %s changed from %d to %d" % (who, folder, first, v))


def note_uids(who, folder, uids):
    with lock:
        for uid in uids:
            if uid in handed[folder]:
                violation("%s: UID %d of %s handed out twice" % (who, folder, uid))
            handed[folder].add(uid)


TOKEN = re.compile(rb"X-Token: ([0-9a-f]{32})")


def note_fetch(who, folder, data):
    """Checks every (uid, token) of a FETCH answer against what was seen before."""
    for item in data:
        if not isinstance(item, tuple):
            continue
        head, body = item[0], item[1]
        uid = re.search(rb"UID (\d+)", head)
        if not uid:
            continue
        uid = int(uid.group(1))
        if body is None:
            continue  # NIL: allowed for a message expunged meanwhile (RFC 2180 s4.1.2)
        token = TOKEN.search(body)
        if not token:
            violation("%s: UID %d of %s served without its token: %r" % (who, uid, folder, (body or b"")[:80]))
            continue
        token = token.group(1)
        with lock:
            first = tokens[folder].setdefault(uid, token)
        if first != token:
            violation("%s: UID %d of %s changed content (%s -> %s)" % (who, uid, folder, first, token))


FETCH_FLAGS = re.compile(rb"UID (\d+) FLAGS \(([^)]*)\) MODSEQ \((\d+)\)|MODSEQ \((\d+)\) UID (\d+) FLAGS \(([^)]*)\)")


def fetched_modseqs(who, folder, data):
    """uid -> (flags, modseq) from FETCH answers with UID, FLAGS and MODSEQ; each pair checked."""
    out = {}
    for item in data:
        line = item[0] if isinstance(item, tuple) else item
        if not isinstance(line, bytes):
            continue
        found = FETCH_FLAGS.search(line)
        if not found:
            continue
        if found.group(1):
            uid, flags, modseq = int(found.group(1)), found.group(2), int(found.group(3))
        else:
            modseq, uid, flags = int(found.group(4)), int(found.group(5)), found.group(6)
        # \Recent is the session's own (RFC 3501 s2.3.2), not a stored flag.
        flags = " ".join(sorted(f for f in flags.decode().split() if f != "\\Recent"))
        with lock:
            first = pairs[folder].setdefault((uid, modseq), flags)
        if first != flags:
            violation("%s: UID %d of %s at MODSEQ %d had flags (%s), now (%s)" % (who, uid, folder, modseq, first, flags))
        if uid not in out or out[uid][1] < modseq:
            out[uid] = (flags, modseq)
    return out


def highest_modseq(m):
    found = m.untagged_responses.pop("HIGHESTMODSEQ", None)
    return int(found[-1]) if found else None


def message(subject):
    token = uuid.uuid4().hex
    return token, ("From: stress@example.test\r\nSubject: %s\r\nX-Token: %s\r\n\r\n%s\r\n" % (subject, token, token * 3)).encode()


def known_uids(folder):
    with lock:
        return sorted(tokens[folder]) or [1]


def session(n):
    who = "session %d" % n
    rnd = random.Random(n)
    try:
        m = imaplib.IMAP4_SSL(HOST, IMAPS, ssl_context=CTX, timeout=30)
        check_ok(who, "LOGIN", *m.login(USER, PASSWORD))
        check_ok(who, "ENABLE", *m.enable("CONDSTORE"))
        folder = "INBOX"
        check_ok(who, "SELECT", *m.select(folder))
        note_validity(who, folder, m)
        synced = highest_modseq(m)
        while time.time() < deadline:
            op = rnd.random()
            uids = known_uids(folder)
            some = rnd.choice(uids)
            span = "%d:%d" % (some, some + rnd.randint(0, 5))
            if op < 0.25:
                typ, data = m.uid("FETCH", span, "(UID FLAGS BODY.PEEK[HEADER.FIELDS (X-Token)])")
                if typ == "NO" and b"EXPUNGEISSUED" in (data[0] or b""):
                    # A message went while being fetched (RFC 5530): what did come must be right.
                    data = m.untagged_responses.pop("FETCH", [])
                    typ = "OK"
                if check_ok(who, "UID FETCH", typ, data):
                    note_fetch(who, folder, data)
                count("fetches")
            elif op < 0.45:
                flag = rnd.choice(["\\Seen", "\\Flagged", "\\Answered", "\\Draft"])
                sign = rnd.choice("+-")
                check_ok(who, "UID STORE", *m.uid("STORE", span, sign + "FLAGS", "(%s)" % flag))
                count("stores")
            elif op < 0.60:
                token, body = message("stress %d" % n)
                target = rnd.choice(FOLDERS)
                typ, data = m.append(target, None, None, body)
                if check_ok(who, "APPEND", typ, data):
                    found = re.search(rb"APPENDUID \d+ (\d+)", data[0] or b"")
                    if found:
                        uid = int(found.group(1))
                        note_uids(who, target, [uid])
                        with lock:
                            tokens[target].setdefault(uid, token.encode())
                    else:
                        violation("%s: APPEND without APPENDUID: %r" % (who, data))
                count("appends")
            elif op < 0.70:
                check_ok(who, "UID STORE", *m.uid("STORE", str(some), "+FLAGS.SILENT", "(\\Deleted)"))
                check_ok(who, "EXPUNGE", *m.expunge())
                count("expunges")
            elif op < 0.80:
                other = "Stress" if folder == "INBOX" else "INBOX"
                typ, data = m.uid("COPY", span, other)
                if check_ok(who, "UID COPY", typ, data):
                    found = re.search(rb"COPYUID \d+ \S+ (\S+)\]", data[-1] or b"")
                    if found:
                        note_uids(who, other, expand(found.group(1).decode()))
                count("copies")
            elif op < 0.85:
                other = "Stress" if folder == "INBOX" else "INBOX"
                typ, data = m.uid("MOVE", span, other)
                check_ok(who, "UID MOVE", typ, data)
                count("moves")
            elif op < 0.90:
                folder = rnd.choice(FOLDERS)
                check_ok(who, "SELECT", *m.select(folder))
                note_validity(who, folder, m)
                synced = highest_modseq(m)
                count("ops")
            elif op < 0.95:
                typ, data = m.status(folder, "(HIGHESTMODSEQ)")
                if check_ok(who, "STATUS", typ, data):
                    found = re.search(rb"HIGHESTMODSEQ (\d+)", data[0] or b"")
                    if not found or synced is None:
                        violation("%s: no HIGHESTMODSEQ (%r, %r)" % (who, data, synced))
                        continue
                    known = int(found.group(1))
                    m.untagged_responses.pop("FETCH", None)
                    typ, changed = m.uid("FETCH", "1:*", "(UID FLAGS)", "(CHANGEDSINCE %d)" % synced)
                    if not check_ok(who, "UID FETCH CHANGEDSINCE", typ, changed):
                        continue
                    changed = fetched_modseqs(who, folder, changed)
                    typ, everything = m.uid("FETCH", "1:*", "(UID FLAGS MODSEQ)")
                    if not check_ok(who, "UID FETCH MODSEQ", typ, everything):
                        continue
                    for uid, (flags, modseq) in fetched_modseqs(who, folder, everything).items():
                        if synced < modseq <= known and changed.get(uid, ("", 0))[1] < modseq:
                            violation("%s: resync of %s since %d missed UID %d at MODSEQ %d (HIGHESTMODSEQ was %d)"
                                      % (who, folder, synced, uid, modseq, known))
                    synced = known
                count("resyncs")
            else:
                check_ok(who, "NOOP", *m.noop())
                count("ops")
        m.logout()
    except Exception as e:  # a dropped session or a protocol error is a finding
        violation("%s: %s: %s" % (who, type(e).__name__, e))


def expand(uids):
    out = []
    for part in uids.split(","):
        if ":" in part:
            a, b = part.split(":")
            out.extend(range(int(a), int(b) + 1))
        else:
            out.append(int(part))
    return out


def deliveries():
    while time.time() < deadline:
        token, body = message("delivered")
        try:
            with smtplib.SMTP(HOST, SMTP, timeout=20) as s:
                s.sendmail("sender@outside.test", [USER], body)
            count("deliveries")
        except Exception as e:
            violation("smtp: %s: %s" % (type(e).__name__, e))
        time.sleep(0.05)


def main():
    setup = imaplib.IMAP4_SSL(HOST, IMAPS, ssl_context=CTX, timeout=30)
    setup.login(USER, PASSWORD)
    setup.create("Stress")
    for f in FOLDERS:
        for i in range(10):
            token, body = message("seed")
            typ, data = setup.append(f, None, None, body)
            found = re.search(rb"APPENDUID (\d+) (\d+)", data[0] or b"")
            with lock:
                validity.setdefault(f, int(found.group(1)))
                handed[f].add(int(found.group(2)))
                tokens[f][int(found.group(2))] = token.encode()
    setup.logout()
    threads = [threading.Thread(target=session, args=(n,)) for n in range(SESSIONS)]
    threads.append(threading.Thread(target=deliveries))
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print(json.dumps({"sessions": SESSIONS, "seconds": SECONDS, "counts": counts, "violations": violations}))
    sys.exit(1 if violations else 0)


main()

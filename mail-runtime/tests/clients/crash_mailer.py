"""Works a mailbox with Python's imaplib or poplib until the server dies, journaling every
change the server acknowledged, so a test can SIGKILL the server and check the store after.

usage: crash_mailer.py imap   HOST IMAPS_PORT USER PASSWORD JOURNAL FIRST_ID
         APPENDs numbered messages (UIDPLUS gives each UID); every third round marks the oldest
         live message \\Deleted and UID EXPUNGEs it.
       crash_mailer.py pop3   HOST POP3S_PORT SMTP_PORT USER PASSWORD JOURNAL FIRST_ID
         delivers three numbered messages over SMTP (smtplib, port 25), then downloads the
         maildrop with poplib, DELEs what it read and QUITs (the UPDATE state deletes them).
       crash_mailer.py list   HOST IMAPS_PORT USER PASSWORD
         prints JSON {"uidvalidity": V, "messages": [{"uid": U, "id": N, "intact": bool}]}.
Journal lines (JSON, flushed one by one):
  {"op": "append", "id": N, "uid": U, "uidvalidity": V}   APPEND answered OK [APPENDUID]
  {"op": "expunging", "id": N, "uid": U}                  UID STORE \\Deleted answered OK, UID
                                                          EXPUNGE about to be sent
  {"op": "expunge", "id": N, "uid": U}                    UID EXPUNGE answered OK
  {"op": "delivered", "id": N}                            SMTP answered 250
  {"op": "quitting", "ids": [...]}                        POP3 QUIT about to be sent
  {"op": "deleted", "ids": [...]}                         POP3 QUIT answered +OK
"""
import email
import imaplib
import json
import poplib
import re
import smtplib
import ssl
import sys

context = ssl.create_default_context()
context.check_hostname = False
context.verify_mode = ssl.CERT_NONE  # dev mode's certificate is self-signed

BODY = "".join(f"line {n:03} of a message that must arrive whole\r\n" for n in range(60))


def message(kind, n):
    return (f"From: crash@example.test\r\nSubject: crash-{kind} {n}\r\n"
            f"Message-ID: <crash-{kind}-{n}@example.test>\r\n\r\n{BODY}").encode()


def intact(raw, kind, n):
    """The message as sent, after any trace headers the server put on top."""
    raw = raw.replace(b"\r\n", b"\n")
    start = raw.find(b"From: crash@example.test\n")
    return start >= 0 and raw[start:] == message(kind, n).replace(b"\r\n", b"\n")


def message_id(raw):
    found = re.search(rb"Subject: crash-\w+ (\d+)", raw)
    return int(found.group(1)) if found else None


def journal_writer(path):
    out = open(path, "a", buffering=1)

    def write(**entry):
        out.write(json.dumps(entry) + "\n")
        out.flush()

    return write


def imap_loop(host, port, user, password, journal, first):
    write = journal_writer(journal)
    imap = imaplib.IMAP4_SSL(host, int(port), ssl_context=context, timeout=10)
    imap.login(user, password)
    imap.select("INBOX")
    live = []
    n = first
    while True:
        typ, data = imap.append("INBOX", None, None, message("imap", n))
        assert typ == "OK", data
        found = re.search(rb"APPENDUID (\d+) (\d+)", data[0])
        validity, uid = int(found.group(1)), int(found.group(2))
        write(op="append", id=n, uid=uid, uidvalidity=validity)
        live.append((n, uid))
        if n % 3 == 0 and live:
            victim, victim_uid = live.pop(0)
            typ, data = imap.uid("STORE", str(victim_uid), "+FLAGS.SILENT", "(\\Deleted)")
            assert typ == "OK", data
            write(op="expunging", id=victim, uid=victim_uid)
            typ, data = imap.uid("EXPUNGE", str(victim_uid))
            assert typ == "OK", data
            write(op="expunge", id=victim, uid=victim_uid)
        n += 1


def pop3_loop(host, port, smtp_port, user, password, journal, first):
    write = journal_writer(journal)
    n = first
    while True:
        with smtplib.SMTP(host, int(smtp_port), timeout=10) as smtp:
            for _ in range(3):
                smtp.sendmail("crash@example.net", [user], message("pop", n))
                write(op="delivered", id=n)
                n += 1
        pop = poplib.POP3_SSL(host, int(port), context=context, timeout=10)
        pop.user(user)
        pop.pass_(password)
        count, _size = pop.stat()
        read = []
        for i in range(1, count + 1):
            _resp, lines, _octets = pop.retr(i)
            raw = b"\r\n".join(lines) + b"\r\n"
            found = message_id(raw)
            assert found is not None and intact(raw, "pop", found), raw[:200]
            read.append(found)
            pop.dele(i)
        # From here the server may delete them (UPDATE) even if its +OK never arrives.
        write(op="quitting", ids=read)
        pop.quit()
        write(op="deleted", ids=read)


def list_mailbox(host, port, user, password):
    imap = imaplib.IMAP4_SSL(host, int(port), ssl_context=context, timeout=10)
    imap.login(user, password)
    typ, data = imap.select("INBOX")
    assert typ == "OK", data
    validity = int(re.search(rb"\d+", imap.response("UIDVALIDITY")[1][0]).group(0))
    messages = []
    typ, data = imap.uid("FETCH", "1:*", "(UID BODY.PEEK[])")
    assert typ == "OK", data
    for item in data:
        if not isinstance(item, tuple):
            continue
        uid = int(re.search(rb"UID (\d+)", item[0]).group(1))
        raw = item[1]
        found = message_id(raw)
        kind = "imap" if b"crash-imap" in raw else "pop"
        messages.append({"uid": uid, "id": found,
                         "intact": found is not None and intact(raw, kind, found)})
    imap.logout()
    print(json.dumps({"uidvalidity": validity, "messages": messages}))


mode = sys.argv[1]
args = sys.argv[2:]
try:
    if mode == "imap":
        imap_loop(*args[:5], int(args[5]))
    elif mode == "pop3":
        pop3_loop(*args[:6], int(args[6]))
    elif mode == "list":
        list_mailbox(*args)
    else:
        sys.exit(f"unknown mode {mode}")
except (OSError, EOFError, imaplib.IMAP4.abort, poplib.error_proto, smtplib.SMTPException) as e:
    if mode == "list":
        raise
    # The server was killed: the journal holds everything it acknowledged.
    print(f"crash_mailer: connection ended: {e!r}", file=sys.stderr)

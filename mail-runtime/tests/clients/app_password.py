"""Logs in with a password over each protocol (imaplib, smtplib, poplib, all over implicit TLS)
and reports what each said; with --hold, keeps the IMAP session open, sends NOOP every 100 ms and
reports when (and how) the server ends it.

usage: app_password.py HOST IMAPS SUBMISSIONS POP3S USER PASSWORD [--only imap,smtp] [--hold]
Prints one JSON line: {"imap": "ok"|"refused", "smtp": ..., "pop3": ...} (with --only, just
those; each refused login counts against the server's failed-login limit); with --hold, then
"holding" once the IMAP session is in, and a JSON line {"ended": "<why>", "after_ms": N} when the
session ends (N counted from the line "revoked" on stdin).
"""
import imaplib
import json
import poplib
import smtplib
import ssl
import sys
import time

host, imaps, submissions, pop3s, user, password = sys.argv[1:7]
options = sys.argv[7:]
hold = "--hold" in options
only = options[options.index("--only") + 1].split(",") if "--only" in options else ["imap", "smtp", "pop3"]
context = ssl.create_default_context()
context.check_hostname = False
context.verify_mode = ssl.CERT_NONE  # the dev runtime's certificate is self-signed


def imap():
    m = imaplib.IMAP4_SSL(host, int(imaps), ssl_context=context, timeout=10)
    try:
        m.login(user, password)
    except imaplib.IMAP4.error:
        return "refused", None
    return "ok", m


def smtp():
    s = smtplib.SMTP_SSL(host, int(submissions), context=context, timeout=10)
    try:
        s.login(user, password)
        return "ok"
    except smtplib.SMTPAuthenticationError:
        return "refused"
    finally:
        s.close()


def pop3():
    p = poplib.POP3_SSL(host, int(pop3s), context=context, timeout=10)
    try:
        p.user(user)
        p.pass_(password)
        p.quit()
        return "ok"
    except poplib.error_proto:
        return "refused"


said, session = imap() if "imap" in only or hold else (None, None)
report = {"imap": said} if "imap" in only else {}
if "smtp" in only:
    report["smtp"] = smtp()
if "pop3" in only:
    report["pop3"] = pop3()
print(json.dumps(report), flush=True)
if hold and session is not None:
    session.select("INBOX")
    print("holding", flush=True)
    assert sys.stdin.readline().strip() == "revoked"
    revoked = time.monotonic()
    why = None
    while why is None and time.monotonic() - revoked < 10:
        try:
            session.noop()
            time.sleep(0.1)
        except (imaplib.IMAP4.abort, imaplib.IMAP4.error, OSError) as err:
            why = str(err) or type(err).__name__
    elapsed = int((time.monotonic() - revoked) * 1000)
    print(json.dumps({"ended": why, "after_ms": elapsed}), flush=True)

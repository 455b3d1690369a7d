"""Two runtimes on one database, as smtplib and imaplib see them.

usage: replicas.py USER PASSWORD A_SMTP A_IMAPS B_IMAPS

1. Delivers a message through A's SMTP and reads it through B's IMAP.
2. Leaves a session of B in IDLE, APPENDs through A, and times until B's session hears the
   new message (the time from the APPEND's OK to B's EXISTS).
Prints one JSON object.
"""
import imaplib
import json
import smtplib
import ssl
import sys
import time
import uuid

user, password, a_smtp, a_imaps, b_imaps = sys.argv[1:6]
context = ssl._create_unverified_context()  # dev mode's certificate is self-signed
token = uuid.uuid4().hex
out = {}

with smtplib.SMTP("127.0.0.1", int(a_smtp), timeout=10) as smtp:
    smtp.sendmail(
        "sender@elsewhere.test",
        [user],
        f"From: sender@elsewhere.test\r\nTo: {user}\r\nSubject: through-a {token}\r\n\r\n{token}\r\n",
    )

b = imaplib.IMAP4_SSL("127.0.0.1", int(b_imaps), ssl_context=context, timeout=10)
b.login(user, password)
typ, data = b.select("INBOX")
out["b_exists"] = int(data[0])
out["b_validity"] = int(b.untagged_responses.get("UIDVALIDITY", [b"0"])[0])
typ, data = b.uid("SEARCH", "SUBJECT", token)
uids = data[0].split()
out["found"] = len(uids)
if uids:
    typ, data = b.uid("FETCH", uids[0], "(BODY.PEEK[])")
    out["body_has_token"] = token.encode() in data[0][1]

a = imaplib.IMAP4_SSL("127.0.0.1", int(a_imaps), ssl_context=context, timeout=10)
a.login(user, password)
a.select("INBOX")
out["a_validity"] = int(a.untagged_responses.get("UIDVALIDITY", [b"0"])[0])

b.send(b"i1 IDLE\r\n")
line = b.readline()
assert line.startswith(b"+"), line
typ, data = a.append("INBOX", None, None, f"Subject: appended {token}\r\n\r\nhello\r\n".encode())
appended = time.monotonic()
out["append"] = typ
while True:
    line = b.readline()
    if not line:
        out["idle_heard"] = None
        break
    if line.rstrip().endswith(b"EXISTS"):
        out["idle_ms"] = round((time.monotonic() - appended) * 1000, 1)
        out["idle_heard"] = line.decode().strip()
        break
b.send(b"DONE\r\n")
print(json.dumps(out), flush=True)

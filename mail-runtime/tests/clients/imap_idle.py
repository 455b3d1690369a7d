"""Waits in IMAP IDLE (imaplib for the session, IDLE sent on its connection) and measures how
long after an SMTP delivery (smtplib, port SMTP_PORT) the untagged EXISTS arrives.

usage: imap_idle.py HOST IMAP_PORT SMTP_PORT USER PASSWORD
Reads INBOX over STARTTLS first. Prints JSON:
{"subjects": [...], "exists": "* N EXISTS", "latency_ms": N}
"""
import email
import imaplib
import json
import smtplib
import ssl
import sys
import time

host, port, smtp_port, user, password = sys.argv[1:6]
context = ssl.create_default_context()
context.check_hostname = False
context.verify_mode = ssl.CERT_NONE  # the quickstart's certificate is self-signed

m = imaplib.IMAP4(host, int(port), timeout=30)
m.starttls(ssl_context=context)
m.login(user, password)
m.select("INBOX")
subjects = []
typ, data = m.fetch("1:*", "(BODY.PEEK[HEADER])")
for part in data:
    if isinstance(part, tuple):
        subjects.append(email.message_from_bytes(part[1])["Subject"])

m.send(b"idle1 IDLE\r\n")
assert m.readline().startswith(b"+"), "no continuation for IDLE"
started = time.monotonic()
smtp = smtplib.SMTP(host, int(smtp_port), timeout=30)
smtp.sendmail("idle-test@example.net", [user], b"Subject: wake up\r\n\r\nIDLE test\r\n")
smtp.quit()
line = m.readline().decode().strip()
latency_ms = int((time.monotonic() - started) * 1000)
m.send(b"DONE\r\n")
while not m.readline().startswith(b"idle1 "):
    pass
m.logout()
print(json.dumps({"subjects": subjects, "exists": line, "latency_ms": latency_ms}))

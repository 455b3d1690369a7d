"""Clients caught by a server's drain (SIGTERM), with Python's smtplib, imaplib and poplib.

usage: drain_clients.py HOST SMTP_PORT IMAPS_PORT POP3S_PORT USER PASSWORD

1. Delivers one message ("kept") and opens, in this order: an SMTP session in the middle of
   DATA (half a message sent), an SMTP session between transactions, an IMAP session in IDLE
   and a POP3 session that marked "kept" for deletion.
2. Prints "ready" and waits for a line on standard input (the server now drains).
3. Reads what each session is told, tries a new SMTP connection, finishes the half-sent
   message, and prints one JSON object of what it saw.
"""
import imaplib
import json
import poplib
import smtplib
import socket
import ssl
import sys

host, smtp_port, imaps_port, pop3s_port, user, password = sys.argv[1:7]
context = ssl.create_default_context()
context.check_hostname = False
context.verify_mode = ssl.CERT_NONE  # dev mode's certificate is self-signed


def message(subject):
    return (
        f"From: sender@elsewhere.test\r\nTo: {user}\r\nSubject: {subject}\r\n"
        f"Message-ID: <{subject}@elsewhere.test>\r\n\r\n"
    ).encode() + b"line of the body\r\n" * 200


with smtplib.SMTP(host, int(smtp_port), timeout=10) as smtp:
    smtp.sendmail("sender@elsewhere.test", [user], message("kept"))

in_flight = smtplib.SMTP(host, int(smtp_port), timeout=30)
in_flight.ehlo("client.elsewhere.test")
in_flight.mail("sender@elsewhere.test")
in_flight.rcpt(user)
code, _ = in_flight.docmd("DATA")
assert code == 354, code
whole = message("in-flight")
in_flight.send(whole[: len(whole) // 2])

between = smtplib.SMTP(host, int(smtp_port), timeout=30)
between.ehlo("client.elsewhere.test")

imap = imaplib.IMAP4_SSL(host, int(imaps_port), ssl_context=context, timeout=30)
imap.login(user, password)
imap.select("INBOX")
imap.send(b"i1 IDLE\r\n")
idling = imap.readline().decode().strip()
assert idling.startswith("+"), idling

pop = poplib.POP3_SSL(host, int(pop3s_port), context=context, timeout=30)
pop.user(user)
pop.pass_(password)
count, _ = pop.stat()
pop.dele(count)

print("ready", flush=True)
sys.stdin.readline()

seen = {}
seen["smtp_between"] = between.getreply()[0]
seen["imap_idle"] = imap.readline().decode().strip()
seen["pop3"] = pop._getline()[0].decode()
try:
    socket.create_connection((host, int(smtp_port)), timeout=5).close()
    seen["new_connection"] = "accepted"
except ConnectionRefusedError:
    seen["new_connection"] = "refused"
in_flight.send(whole[len(whole) // 2 :] + b".\r\n")
code, text = in_flight.getreply()
seen["smtp_in_flight"] = [code, text.decode()]
seen["smtp_after"] = in_flight.getreply()[0]
print(json.dumps(seen), flush=True)

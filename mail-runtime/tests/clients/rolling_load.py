"""Clients that keep working while the servers behind a load balancer restart one by one.

usage: rolling_load.py HOST SMTP_PORT IMAPS_PORT USER PASSWORD SENDERS READERS

SENDERS smtplib clients each send unique messages in a loop; a message refused with a 4xx, or
whose connection broke before the 250, is sent again (RFC 5321 s4.5.4), so only an
acknowledged message counts as sent. READERS imaplib clients SELECT INBOX and NOOP/FETCH in a
loop, and log in again when the server says BYE or the connection drops. Runs until a line
arrives on standard input, then prints one JSON object: the acknowledged tokens, how many SMTP
attempts had to be made again and why, how many IMAP sessions were ended by the server and how
many commands failed.
"""
import imaplib
import json
import smtplib
import socket
import ssl
import sys
import threading
import time
import uuid

host, smtp_port, imaps_port, user, password = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
senders, readers = int(sys.argv[6]), int(sys.argv[7])
ctx = ssl._create_unverified_context()
stop = threading.Event()
lock = threading.Lock()
acked = []
counts = {"smtp_retried_4xx": 0, "smtp_retried_broken": 0, "smtp_5xx": 0,
          "imap_sessions_ended": 0, "imap_commands_failed": 0, "imap_commands": 0, "imap_logins": 0}


def bump(key):
    with lock:
        counts[key] += 1


def sender():
    while not stop.is_set():
        token = uuid.uuid4().hex
        body = f"Subject: rolling {token}\r\nMessage-ID: <{token}@load.test>\r\n\r\n{token}\r\n"
        while True:
            try:
                s = smtplib.SMTP(host, smtp_port, timeout=30)
                s.sendmail("load@elsewhere.test", [user], body)
                # The 250 for the message is what counts; a draining server may answer the
                # QUIT that follows with 421, which changes nothing.
                with lock:
                    acked.append(token)
                try:
                    s.quit()
                except (smtplib.SMTPException, OSError):
                    s.close()
                break
            except smtplib.SMTPResponseException as e:
                if 400 <= e.smtp_code < 500:
                    bump("smtp_retried_4xx")
                else:
                    bump("smtp_5xx")
                    break
            except (smtplib.SMTPServerDisconnected, smtplib.SMTPRecipientsRefused, OSError):
                bump("smtp_retried_broken")
            time.sleep(0.2)


def reader():
    while not stop.is_set():
        try:
            c = imaplib.IMAP4_SSL(host, imaps_port, ssl_context=ctx, timeout=30)
            c.login(user, password)
            bump("imap_logins")
            c.select("INBOX")
            while not stop.is_set():
                bump("imap_commands")
                typ, _ = c.noop()
                if typ != "OK":
                    bump("imap_commands_failed")
                bump("imap_commands")
                typ, _ = c.fetch("1:*", "(FLAGS)") if int(c.select("INBOX", readonly=True)[1][0] or 0) else ("OK", None)
                if typ != "OK":
                    bump("imap_commands_failed")
                time.sleep(0.05)
        except (imaplib.IMAP4.abort, OSError):
            bump("imap_sessions_ended")
            time.sleep(0.2)
        except imaplib.IMAP4.error:
            bump("imap_commands_failed")
            time.sleep(0.2)


threads = [threading.Thread(target=sender, daemon=True) for _ in range(senders)]
threads += [threading.Thread(target=reader, daemon=True) for _ in range(readers)]
for t in threads:
    t.start()
print("running", flush=True)
sys.stdin.readline()
stop.set()
for t in threads:
    t.join(timeout=60)
print(json.dumps({"acked": acked, **counts}), flush=True)

"""An office's clients logging in at once, a flood of failed IMAP logins from one address, then
logins from it and from another.

usage: login_flood.py HOST IMAPS_PORT SUBMISSION_PORT USER PASSWORD
Prints JSON: how many of 30 right-password logins made at once from 127.0.0.3 (a fresh
runtime, nothing cached) got in, how the 20 wrong-password attempts from 127.0.0.1 ended,
whether a right password from 127.0.0.1 is refused afterwards, and how long a right login from
127.0.0.2 took.
"""
import imaplib
import json
import smtplib
import ssl
import sys
import threading
import time

host, imaps, submission, user, password = sys.argv[1:6]
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
results = []
lock = threading.Lock()


def wrong(n):
    m = imaplib.IMAP4_SSL(host, int(imaps), ssl_context=ctx)
    try:
        m.login(user, "wrong-%d" % n)
        outcome = "accepted"
    except imaplib.IMAP4.error as err:
        text = str(err)
        outcome = "limited" if "UNAVAILABLE" in text else "refused" if "AUTHENTICATIONFAILED" in text else text
    with lock:
        results.append(outcome)
    try:
        m.logout()
    except Exception:
        pass


office = []


class FromOffice(imaplib.IMAP4_SSL):
    """imaplib's IMAPS client, connecting from the office's address, 127.0.0.3."""

    def _create_socket(self, timeout):
        import socket
        sock = socket.create_connection((self.host, self.port), timeout, source_address=("127.0.0.3", 0))
        return self.ssl_context.wrap_socket(sock, server_hostname=self.host)


def right():
    try:
        m = FromOffice(host, int(imaps), ssl_context=ctx, timeout=30)
        m.login(user, password)
        outcome = "in"
        m.logout()
    except Exception as err:
        outcome = str(err)
    with lock:
        office.append(outcome)


threads = [threading.Thread(target=right) for _ in range(30)]
for t in threads:
    t.start()
for t in threads:
    t.join()

threads = [threading.Thread(target=wrong, args=(n,)) for n in range(20)]
for t in threads:
    t.start()
for t in threads:
    t.join()


def smtp_login(source):
    s = smtplib.SMTP(host, int(submission), source_address=(source, 0), timeout=10)
    s.starttls(context=ctx)
    start = time.monotonic()
    try:
        s.login(user, password)
        ok = True
    except smtplib.SMTPException as err:
        ok = str(err)
    took = time.monotonic() - start
    s.quit()
    return ok, took


same_ok, _ = smtp_login("127.0.0.1")
other_ok, other_took = smtp_login("127.0.0.2")
print(json.dumps({
    "office_logged_in": office.count("in"),
    "office_refusals": [o for o in office if o != "in"][:3],
    "refused": results.count("refused"),
    "limited": results.count("limited"),
    "accepted": results.count("accepted"),
    "same_address_right_password": same_ok,
    "other_address": other_ok,
    "other_address_seconds": other_took,
}))

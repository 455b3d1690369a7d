"""Times each command of a real SMTP, IMAP and POP3 session (smtplib, imaplib, poplib) and prints
JSON {"smtp ehlo": seconds, ...} with the slowest answer of every step.

usage: responsive.py HOST SMTP_PORT IMAPS_PORT POP3S_PORT USER PASSWORD ROUNDS
"""
import imaplib
import json
import poplib
import smtplib
import ssl
import sys
import time

host, smtp_port, imaps_port, pop3s_port, user, password, rounds = sys.argv[1:8]
context = ssl.create_default_context()
context.check_hostname = False
context.verify_mode = ssl.CERT_NONE  # dev mode's certificate is self-signed
slowest = {}


def timed(step, call):
    start = time.monotonic()
    result = call()
    elapsed = time.monotonic() - start
    slowest[step] = max(slowest.get(step, 0.0), elapsed)
    return result


for n in range(int(rounds)):
    smtp = timed("smtp connect+greeting", lambda: smtplib.SMTP(host, int(smtp_port), timeout=10))
    timed("smtp ehlo", smtp.ehlo)
    timed("smtp mail", lambda: smtp.mail("load@example.net"))
    code, _ = timed("smtp rcpt", lambda: smtp.rcpt(user))
    assert code == 250, code
    code, _ = timed("smtp data", lambda: smtp.data(f"Subject: responsive {n}\r\n\r\nhello\r\n"))
    assert code == 250, code
    timed("smtp quit", smtp.quit)

    imap = timed("imap connect+tls+greeting",
                 lambda: imaplib.IMAP4_SSL(host, int(imaps_port), ssl_context=context, timeout=10))
    timed("imap login", lambda: imap.login(user, password))
    typ, _ = timed("imap select", lambda: imap.select("INBOX"))
    assert typ == "OK"
    typ, _ = timed("imap fetch", lambda: imap.fetch("1:*", "(FLAGS RFC822.SIZE)"))
    assert typ == "OK"
    timed("imap logout", imap.logout)

    pop = timed("pop3 connect+tls+greeting",
                lambda: poplib.POP3_SSL(host, int(pop3s_port), context=context, timeout=10))
    timed("pop3 user+pass", lambda: (pop.user(user), pop.pass_(password)))
    count, _ = timed("pop3 stat", pop.stat)
    assert count > 0
    timed("pop3 quit", pop.quit)

print(json.dumps(slowest))

"""Submits one message with Python's smtplib the way a mail program does.

usage: smtplib_submit.py MODE HOST PORT USER PASSWORD FROM TO SUBJECT
MODE: starttls (587) or ssl (465). Prints a JSON line of what the server offered.
"""
import json
import smtplib
import ssl
import sys
from email.message import EmailMessage

mode, host, port, user, password, sender, rcpt, subject = sys.argv[1:9]
context = ssl.create_default_context()
context.check_hostname = False
context.verify_mode = ssl.CERT_NONE  # dev mode's certificate is self-signed

msg = EmailMessage()
msg["From"] = sender
msg["To"] = rcpt
msg["Subject"] = subject
msg.set_content("Sent by smtplib.\n")

report = {}
if mode == "starttls":
    with smtplib.SMTP(host, int(port), timeout=10) as s:
        s.ehlo()
        report["auth_before_tls"] = s.has_extn("auth")
        report["starttls"] = s.has_extn("starttls")
        try:
            s.login(user, password)
            report["login_before_tls"] = True
        except smtplib.SMTPNotSupportedError:
            report["login_before_tls"] = False
        s.starttls(context=context)
        s.ehlo()
        report["auth_after_tls"] = s.has_extn("auth")
        s.login(user, password)
        refused = s.send_message(msg)
        report["refused"] = refused
else:
    with smtplib.SMTP_SSL(host, int(port), context=context, timeout=10) as s:
        s.login(user, password)
        report["refused"] = s.send_message(msg)
print(json.dumps(report))

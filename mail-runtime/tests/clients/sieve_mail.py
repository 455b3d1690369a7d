"""Mail for the Sieve tests, with Python's smtplib and imaplib over TLS.

usage:
  sieve_mail.py send HOST PORT USER PASSWORD TO SUBJECT [HEADER: value ...]
      submission (implicit TLS) as USER; prints "sent" or "refused <code> <text>"
  sieve_mail.py mx HOST PORT MAIL_FROM TO SUBJECT [--count N] [HEADER: value ...]
      port 25 without login, MAIL FROM as given ("" for the null sender); N messages in one
      session, numbered
  sieve_mail.py folders HOST IMAPS USER PASSWORD FOLDER...
      prints a JSON object: folder -> [{"subject", "from", "auto_submitted", "flags"}], INBOX
      included
"""
import email
import imaplib
import json
import smtplib
import ssl
import sys

context = ssl.create_default_context()
context.check_hostname = False
context.verify_mode = ssl.CERT_NONE  # the dev runtime's certificate is self-signed


def message(sender, to, subject, headers):
    lines = [f"From: {sender}", f"To: {to}", f"Subject: {subject}", "Message-ID: <%s@test>" % abs(hash((sender, subject)))]
    lines += headers
    return ("\r\n".join(lines) + "\r\n\r\nbody of " + subject + "\r\n").encode()


def report(send):
    try:
        send()
        print("sent")
    except smtplib.SMTPRecipientsRefused as e:
        code, text = list(e.recipients.values())[0]
        print("refused", code, text.decode(errors="replace"))
    except smtplib.SMTPDataError as e:
        print("refused", e.smtp_code, e.smtp_error.decode(errors="replace"))


command = sys.argv[1]
if command == "send":
    host, port, user, password, to, subject = sys.argv[2:8]
    def go():
        with smtplib.SMTP_SSL(host, int(port), context=context, timeout=20) as s:
            s.login(user, password)
            s.sendmail(user, [to], message(user, to, subject, sys.argv[8:]))
    report(go)
elif command == "mx":
    host, port, mail_from, to, subject = sys.argv[2:7]
    headers = sys.argv[7:]
    count = 1
    if headers[:1] == ["--count"]:
        count, headers = int(headers[1]), headers[2:]
    def go():
        with smtplib.SMTP(host, int(port), timeout=20) as s:
            s.ehlo("outside.example.org")
            header_from = mail_from or "mailer-daemon@outside.example.org"
            for n in range(count):
                name = subject if count == 1 else f"{subject} {n + 1}"
                s.sendmail(mail_from, [to], message(header_from, to, name, headers))
    report(go)
elif command == "folders":
    host, port, user, password = sys.argv[2:6]
    m = imaplib.IMAP4_SSL(host, int(port), ssl_context=context, timeout=20)
    m.login(user, password)
    out = {}
    for folder in ["INBOX"] + sys.argv[6:]:
        # imaplib sends the name as given: quoted here, as a name with spaces needs.
        quoted = '"' + folder.replace("\\", "\\\\").replace('"', '\\"') + '"'
        typ, _ = m.select(quoted, readonly=True)
        if typ != "OK":
            out[folder] = None
            continue
        found = []
        typ, data = m.uid("FETCH", "1:*", "(FLAGS BODY.PEEK[HEADER])")
        for item in data:
            if not isinstance(item, tuple):
                continue
            header = email.message_from_bytes(item[1])
            flags = imaplib.ParseFlags(item[0])
            found.append({
                "subject": header.get("Subject", ""),
                "from": header.get("From", ""),
                "auto_submitted": header.get("Auto-Submitted", ""),
                "flags": sorted(f.decode() for f in flags if f != b"\\Recent"),
            })
        out[folder] = found
    m.logout()
    print(json.dumps(out))

"""Exercises an IMAP account with Python's imaplib, the way a desktop client would.

usage: imaplib_battery.py HOST IMAP_PORT IMAPS_PORT USER PASSWORD
The INBOX must hold the messages the test delivered (subjects "first" and "second").
Prints JSON with what each step returned; the test asserts on it.
"""
import email
import imaplib
import json
import ssl
import sys

host, port, ssl_port, user, password = sys.argv[1:6]
context = ssl.create_default_context()
context.check_hostname = False
context.verify_mode = ssl.CERT_NONE  # dev mode's certificate is self-signed
out = {}


def ok(result):
    typ, data = result
    assert typ == "OK", (typ, data)
    return data


# STARTTLS on 143: login is refused before TLS, works after.
plain = imaplib.IMAP4(host, int(port))
out["caps_before_tls"] = sorted(plain.capabilities)
try:
    plain.login(user, password)
    out["login_before_tls"] = "accepted"
except imaplib.IMAP4.error as err:
    out["login_before_tls"] = str(err)
plain.starttls(ssl_context=context)
ok(plain.login(user, password))
plain.logout()

m = imaplib.IMAP4_SSL(host, int(ssl_port), ssl_context=context)
ok(m.login(user, password))
out["caps"] = sorted(m.capabilities)
out["list"] = [line.decode() for line in ok(m.list())]
out["select"] = int(ok(m.select("INBOX"))[0])
subjects = []
for part in ok(m.fetch("1:*", "(UID RFC822)")):
    if isinstance(part, tuple):
        subjects.append(email.message_from_bytes(part[1])["Subject"])
out["subjects"] = subjects
out["unseen_after_fetch"] = ok(m.search(None, "UNSEEN"))[0].decode()
ok(m.store("1", "-FLAGS", "\\Seen"))
out["unseen_after_store"] = ok(m.search(None, "UNSEEN"))[0].decode()
out["search_subject"] = ok(m.uid("SEARCH", None, "SUBJECT", "second"))[0].decode()
ok(m.uid("COPY", "1", "Archive"))
out["copy"] = m.response("COPYUID")[1][0].decode()  # the tagged OK's response code
out["append"] = ok(
    m.append("Sent", "(\\Seen)", None, b"Subject: sent from imaplib\r\n\r\nhi\r\n")
)[0].decode()
out["status_sent"] = ok(m.status("Sent", "(MESSAGES UNSEEN)"))[0].decode()
out["quota"] = [str(x) for x in m.getquotaroot("INBOX")[1]]

# Two sessions on one mailbox: the other one hears of STORE and EXPUNGE.
other = imaplib.IMAP4_SSL(host, int(ssl_port), ssl_context=context)
ok(other.login(user, password))
ok(other.select("INBOX"))
ok(m.store("2", "+FLAGS", "\\Deleted"))
ok(other.noop())
out["other_fetch"] = [x.decode() for x in other.untagged_responses.pop("FETCH", [])]
ok(m.expunge())
ok(other.noop())
out["other_expunge"] = [x.decode() for x in other.untagged_responses.pop("EXPUNGE", [])]
other.logout()

ok(m.close())
m.logout()
print(json.dumps(out))

"""Sets or clears keywords with imaplib's UID STORE, as a mail client's "Junk" and "Not Junk"
buttons do (Thunderbird: $Junk and $NotJunk), over implicit TLS.

usage: imap_mark.py HOST IMAPS USER PASSWORD FOLDER SUBJECT CHANGE [CHANGE ...]
Each CHANGE is +KEYWORD or -KEYWORD, stored on the messages of FOLDER whose Subject contains
SUBJECT, one command per change. Prints "marked N" (N: messages found).
"""
import imaplib
import ssl
import sys

host, port, user, password, folder, subject = sys.argv[1:7]
changes = sys.argv[7:]
context = ssl.create_default_context()
context.check_hostname = False
context.verify_mode = ssl.CERT_NONE  # the dev runtime's certificate is self-signed
m = imaplib.IMAP4_SSL(host, int(port), ssl_context=context, timeout=20)
m.login(user, password)
typ, _ = m.select(folder)
assert typ == "OK", folder
typ, data = m.uid("SEARCH", "SUBJECT", '"%s"' % subject)
uids = b",".join(data[0].split()).decode()
for change in changes:
    if uids:
        typ, data = m.uid("STORE", uids, change[0] + "FLAGS", "(%s)" % change[1:])
        assert typ == "OK", data
m.logout()
print("marked %d" % (len(uids.split(",")) if uids else 0))

"""Moves messages between folders with imaplib's MOVE (RFC 6851), over implicit TLS.

usage: imap_move.py HOST IMAPS USER PASSWORD FROM TO [FROM TO ...]
Each pair moves the first message of FROM to TO. Prints "moved N".
"""
import imaplib
import ssl
import sys

host, port, user, password = sys.argv[1:5]
pairs = sys.argv[5:]
context = ssl.create_default_context()
context.check_hostname = False
context.verify_mode = ssl.CERT_NONE  # the dev runtime's certificate is self-signed
m = imaplib.IMAP4_SSL(host, int(port), ssl_context=context, timeout=20)
m.login(user, password)
moved = 0
for source, target in zip(pairs[::2], pairs[1::2]):
    m.select(source)
    typ, data = m.uid("SEARCH", "ALL")
    uids = data[0].split()
    if not uids:
        continue
    typ, _ = m.uid("MOVE", uids[0], target)
    if typ == "OK":
        moved += 1
m.logout()
print(f"moved {moved}")

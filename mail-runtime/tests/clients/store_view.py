"""What an IMAP client sees of a mailbox, to compare two servers (imaplib).

usage: store_view.py PORT USER PASSWORD

For every folder: UIDVALIDITY, and per message its UID, FLAGS (without \\Recent, which belongs
to the session), INTERNALDATE, RFC822.SIZE and the SHA-256 of every 50th message's bytes.
Prints one JSON object.
"""
import hashlib
import imaplib
import json
import re
import ssl
import sys

port, user, password = sys.argv[1:4]
c = imaplib.IMAP4_SSL("127.0.0.1", int(port), ssl_context=ssl._create_unverified_context(), timeout=60)
c.login(user, password)
typ, listing = c.list()
view = {"subscribed": sorted(l.decode().rsplit(' "/" ', 1)[-1].strip('"') for l in c.lsub()[1] if l)}
for line in listing:
    name = line.decode().rsplit(' "/" ', 1)[-1].strip('"')
    typ, _ = c.select(f'"{name}"', readonly=True)
    validity = c.untagged_responses.get("UIDVALIDITY", [b"0"])[0].decode()
    messages = []
    typ, data = c.uid("FETCH", "1:*", "(FLAGS INTERNALDATE RFC822.SIZE)")
    for item in data:
        if not item:
            continue
        text = item.decode() if isinstance(item, bytes) else item[0].decode()
        uid = re.search(r"UID (\d+)", text)
        if not uid:
            continue
        flags = re.search(r"FLAGS \(([^)]*)\)", text).group(1).split()
        flags = sorted(f for f in flags if f != "\\Recent")
        date = re.search(r'INTERNALDATE "([^"]+)"', text).group(1)
        size = re.search(r"RFC822.SIZE (\d+)", text).group(1)
        messages.append([int(uid.group(1)), flags, date, int(size)])
    messages.sort()
    digests = {}
    for uid, *_ in messages[::50]:
        typ, data = c.uid("FETCH", str(uid), "(BODY.PEEK[])")
        digests[uid] = hashlib.sha256(data[0][1]).hexdigest()
    view[name] = {"validity": validity, "messages": messages, "digests": digests}
print(json.dumps(view, sort_keys=True))

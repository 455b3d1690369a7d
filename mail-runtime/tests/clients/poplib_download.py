"""Downloads a mailbox with Python's poplib.

usage: poplib_download.py MODE HOST PORT USER PASSWORD ACTION
MODE: stls (port 110) or ssl (995).
ACTION: quit   - download every message, delete each, QUIT (deletions take effect)
        drop   - download and delete every message, then drop the connection without QUIT
        list   - only list (UIDL) and QUIT
Prints JSON: {"subjects": [...], "uidl": [...], "capa": [...]}.
"""
import json
import poplib
import ssl
import sys
from email.parser import BytesParser

mode, host, port, user, password, action = sys.argv[1:7]
context = ssl.create_default_context()
context.check_hostname = False
context.verify_mode = ssl.CERT_NONE  # dev mode's certificate is self-signed

if mode == "ssl":
    pop = poplib.POP3_SSL(host, int(port), context=context, timeout=10)
else:
    pop = poplib.POP3(host, int(port), timeout=10)
    capa_before = pop.capa()
    assert "USER" not in capa_before, "USER offered before STLS"
    pop.stls(context=context)
capa = sorted(pop.capa().keys())
pop.user(user)
pop.pass_(password)
count, _size = pop.stat()
uidl = [line.decode().split()[1] for line in pop.uidl()[1]]
subjects = []
if action in ("quit", "drop"):
    for i in range(1, count + 1):
        _resp, lines, _octets = pop.retr(i)
        message = BytesParser().parsebytes(b"\r\n".join(lines))
        subjects.append(message["Subject"])
        pop.dele(i)
if action == "drop":
    pop.sock.close()
else:
    pop.quit()
print(json.dumps({"subjects": subjects, "uidl": uidl, "capa": capa}))

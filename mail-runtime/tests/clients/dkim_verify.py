"""Verifies a message's DKIM signature with dkimpy (an implementation kubemail did not write).

usage: dkim_verify.py MESSAGE_FILE NAME TXT_FILE
The DNS answer for NAME (the selector's _domainkey name) is the TXT record in TXT_FILE: dkimpy
is given it instead of a DNS query, the only part of the check that is not dkimpy's own.
Prints "pass" or "fail: <reason>"; exits 0 only on pass.
"""
import sys

import dkim

message_file, name, txt_file = sys.argv[1:4]
record = open(txt_file, "rb").read().strip()


def dnsfunc(qname, timeout=5):
    q = qname.decode() if isinstance(qname, bytes) else qname
    return record if q.rstrip(".") == name.rstrip(".") else None


message = open(message_file, "rb").read()
# The test peer's own trace headers are not part of what was signed.
lines = message.split(b"\r\n")
while lines and lines[0].startswith(b"X-Peer-"):
    lines.pop(0)
message = b"\r\n".join(lines)
d = dkim.DKIM(message)
try:
    ok = d.verify(dnsfunc=dnsfunc)
except dkim.DKIMException as err:
    print("fail: %s" % err)
    sys.exit(1)
print("pass" if ok else "fail: signature does not verify")
sys.exit(0 if ok else 1)

"""A receiving SMTP server for tests, on aiosmtpd: the remote MX or the smarthost.

usage: smtp_peer.py HOST PORT OUTDIR [--fail-first N] [--reject ADDRESS]... [--auth USER:PASS]
                   [--tls CERT KEY] [--stall-while FILE]
Each accepted message is written to OUTDIR/<n>.eml (with X-Peer-Rcpt and X-Peer-Auth headers
naming the envelope recipients and the AUTH user, and X-Peer-TLS: yes or no). With --tls it
offers STARTTLS with that certificate. The first N DATA commands get
"451 4.3.0"; RCPT to a --reject address gets "550 5.1.1". With --stall-while, RCPT is not answered while FILE
exists (a next hop that hangs mid-transaction: a client that dies meanwhile never reaches DATA,
so nothing is counted for it). Prints "ready" once listening and runs until stdin closes.
"""
import argparse
import asyncio
import os
import sys
import threading

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

p = argparse.ArgumentParser()
p.add_argument("host")
p.add_argument("port", type=int)
p.add_argument("outdir")
p.add_argument("--fail-first", type=int, default=0)
p.add_argument("--reject", action="append", default=[])
p.add_argument("--auth")
p.add_argument("--tls", nargs=2, metavar=("CERT", "KEY"))
p.add_argument("--stall-while")
args = p.parse_args()
os.makedirs(args.outdir, exist_ok=True)
lock = threading.Lock()
state = {"data": 0, "saved": 0}


class Handler:
    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        while args.stall_while and os.path.exists(args.stall_while):
            await asyncio.sleep(0.1)
        if address.lower() in (r.lower() for r in args.reject):
            return "550 5.1.1 <%s>: no such user here" % address
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server, session, envelope):
        with lock:
            state["data"] += 1
            if state["data"] <= args.fail_first:
                return "451 4.3.0 try again later (attempt %d)" % state["data"]
            state["saved"] += 1
            n = state["saved"]
        user = session.auth_data.login.decode() if session.authenticated else ""
        head = "X-Peer-Rcpt: %s\r\nX-Peer-Auth: %s\r\nX-Peer-From: %s\r\nX-Peer-TLS: %s\r\n" % (
            ",".join(envelope.rcpt_tos), user, envelope.mail_from,
            "yes" if session.ssl else "no")
        with open(os.path.join(args.outdir, "%d.eml" % n), "wb") as f:
            f.write(head.encode() + envelope.original_content)
        return "250 2.0.0 OK saved as %d" % n


def authenticator(server, session, envelope, mechanism, auth_data):
    if not isinstance(auth_data, LoginPassword) or not args.auth:
        return AuthResult(success=False, handled=False)
    user, password = args.auth.split(":", 1)
    ok = auth_data.login.decode() == user and auth_data.password.decode() == password
    return AuthResult(success=ok, auth_data=auth_data)


kwargs = {}
if args.auth:
    kwargs = {"authenticator": authenticator, "auth_require_tls": False}
if args.tls:
    import ssl
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(*args.tls)
    kwargs["tls_context"] = context
controller = Controller(Handler(), hostname=args.host, port=args.port, **kwargs)
controller.start()
print("ready", flush=True)
sys.stdin.read()
controller.stop()

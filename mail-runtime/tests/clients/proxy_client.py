"""Mail clients that connect from a chosen loopback address (the address a PROXY header will
carry when they go through HAProxy), for tests/proxy_protocol.rs. Each prints one JSON object.

usage: proxy_client.py smtp PORT SOURCE TLS [--user U --password P] [--rcpt TO ...] [--subject S]
         TLS: none, starttls or implicit. EHLO, optional AUTH PLAIN (one attempt), MAIL FROM
         <alice@example.test>, each RCPT; with --subject and every RCPT taken, DATA.
         {"login": [code, text] | null, "mail": code, "rcpts": [[code, text]], "data": code | null}
       proxy_client.py imap PORT SOURCE TLS USER PASSWORD
         TLS: starttls or implicit. {"login": "OK" | "NO ..."}
       proxy_client.py silent PORT SOURCE
         connects, sends EHLO without a PROXY header; {"received": text until the server closes}
       proxy_client.py one-segment PORT SOURCE HEADER
         implicit TLS: sends HEADER (a PROXY v1 line, CRLF added) and the TLS ClientHello in one
         write, as a load balancer does, then completes the handshake and reads the greeting.
         {"greeting": first line over TLS}
"""
import argparse
import imaplib
import json
import smtplib
import socket
import ssl

context = ssl.create_default_context()
context.check_hostname = False
context.verify_mode = ssl.CERT_NONE  # dev mode's certificate is self-signed

HOST = "127.0.0.1"


def reply(err):
    return [err.smtp_code, err.smtp_error.decode(errors="replace")]


def smtp(args):
    source = (args.source, 0)
    if args.tls == "implicit":
        s = smtplib.SMTP_SSL(HOST, args.port, source_address=source, context=context, timeout=30)
    else:
        s = smtplib.SMTP(HOST, args.port, source_address=source, timeout=30)
    out = {"login": None, "mail": None, "rcpts": [], "data": None}
    s.ehlo("client.example")
    if args.tls == "starttls":
        s.starttls(context=context)
        s.ehlo("client.example")
    if args.user:
        s.user, s.password = args.user, args.password
        try:
            code, text = s.auth("PLAIN", s.auth_plain)
            out["login"] = [code, text.decode(errors="replace")]
        except smtplib.SMTPAuthenticationError as err:
            out["login"] = reply(err)
        except smtplib.SMTPResponseException as err:
            out["login"] = reply(err)
        if out["login"][0] != 235:
            print(json.dumps(out))
            return
    out["mail"] = s.mail("alice@example.test")[0]
    for rcpt in args.rcpt:
        code, text = s.rcpt(rcpt)
        out["rcpts"].append([code, text.decode(errors="replace")])
    if args.subject and args.rcpt and all(c == 250 for c, _ in out["rcpts"]):
        message = (
            f"From: alice@example.test\r\nTo: {', '.join(args.rcpt)}\r\n"
            f"Subject: {args.subject}\r\n\r\nthrough HAProxy\r\n"
        )
        out["data"] = s.data(message.encode())[0]
    else:
        s.rset()
    s.quit()
    print(json.dumps(out))


class SourcedIMAP(imaplib.IMAP4):
    source = None

    def _create_socket(self, timeout):
        return socket.create_connection((self.host, self.port), timeout, (self.source, 0))


class SourcedIMAPS(imaplib.IMAP4_SSL):
    source = None

    def _create_socket(self, timeout):
        sock = socket.create_connection((self.host, self.port), timeout, (self.source, 0))
        return self.ssl_context.wrap_socket(sock, server_hostname=self.host)


def imap(args):
    if args.tls == "implicit":
        SourcedIMAPS.source = args.source
        m = SourcedIMAPS(HOST, args.port, ssl_context=context, timeout=30)
    else:
        SourcedIMAP.source = args.source
        m = SourcedIMAP(HOST, args.port, timeout=30)
        m.starttls(ssl_context=context)
    try:
        typ, _ = m.login(args.user, args.password)
        result = typ
    except imaplib.IMAP4.error as err:
        result = f"NO {err}"
    m.logout()
    print(json.dumps({"login": result}))


def connect(port, source):
    return socket.create_connection((HOST, port), 30, (source, 0))


def silent(args):
    sock = connect(args.port, args.source)
    sock.sendall(b"EHLO client.example\r\n")
    received = b""
    while True:
        try:
            chunk = sock.recv(4096)
        except ConnectionResetError:
            break
        if not chunk:
            break
        received += chunk
    print(json.dumps({"received": received.decode(errors="replace")}))


def one_segment(args):
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname="localhost")
    try:
        tls.do_handshake()
    except ssl.SSLWantReadError:
        pass
    sock = connect(args.port, args.source)
    sock.sendall(args.header.encode() + b"\r\n" + outgoing.read())
    while True:
        try:
            tls.do_handshake()
            break
        except ssl.SSLWantReadError:
            pending = outgoing.read()
            if pending:
                sock.sendall(pending)
            data = sock.recv(65536)
            if not data:
                raise SystemExit("connection closed during the TLS handshake")
            incoming.write(data)
    sock.sendall(outgoing.read())
    greeting = b""
    while b"\r\n" not in greeting:
        try:
            greeting += tls.read(4096)
        except ssl.SSLWantReadError:
            data = sock.recv(65536)
            if not data:
                break
            incoming.write(data)
    print(json.dumps({"greeting": greeting.decode(errors="replace").split("\r\n")[0]}))


def main():
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("smtp")
    p.add_argument("port", type=int)
    p.add_argument("source")
    p.add_argument("tls", choices=["none", "starttls", "implicit"])
    p.add_argument("--user")
    p.add_argument("--password")
    p.add_argument("--rcpt", action="append", default=[])
    p.add_argument("--subject")
    p.set_defaults(run=smtp)
    p = sub.add_parser("imap")
    p.add_argument("port", type=int)
    p.add_argument("source")
    p.add_argument("tls", choices=["starttls", "implicit"])
    p.add_argument("user")
    p.add_argument("password")
    p.set_defaults(run=imap)
    p = sub.add_parser("silent")
    p.add_argument("port", type=int)
    p.add_argument("source")
    p.set_defaults(run=silent)
    p = sub.add_parser("one-segment")
    p.add_argument("port", type=int)
    p.add_argument("source")
    p.add_argument("header")
    p.set_defaults(run=one_segment)
    args = parser.parse_args()
    args.run(args)


if __name__ == "__main__":
    main()

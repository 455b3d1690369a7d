#!/usr/bin/env python3
"""IMAP COMPRESS=DEFLATE (RFC 4978) from a client's side, with Python's zlib as the DEFLATE:
after the tagged OK every byte both ways is one raw DEFLATE stream. Prints one JSON line.

usage: imap_compress.py HOST IMAPS_PORT USER PASSWORD MODE
  MODE session: SELECT, FETCH and APPEND through DEFLATE, COMPRESS again refused
  MODE bomb:    200 MB of one line, 200 KB compressed: the server must end the session, not
                inflate it into memory
  MODE pipelined: a NOOP sent in the clear behind COMPRESS, before its OK (RFC 4978 says wait):
                dropped, not inflated as garbage, and the compressed session goes on
"""
import json
import socket
import ssl
import sys
import zlib

HOST, PORT, USER, PASSWORD, MODE = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
ctx = ssl._create_unverified_context()
sock = ctx.wrap_socket(socket.create_connection((HOST, PORT), timeout=30))
plain = sock.makefile("rb")


def until(tag, read):
    out = b""
    while True:
        line = read()
        if not line:
            return out + b"<closed>"
        out += line
        if line.startswith(tag + b" "):
            return out


plain.readline()
sock.sendall(b"a LOGIN %s %s\r\n" % (USER.encode(), PASSWORD.encode()))
until(b"a", plain.readline)
sock.sendall(b"b COMPRESS DEFLATE\r\n" + (b"x NOOP\r\n" if MODE == "pipelined" else b""))
started = until(b"b", plain.readline)
assert b"b OK" in started, started

deflate = zlib.compressobj(wbits=-15)
inflate = zlib.decompressobj(wbits=-15)
pending = b""


def send(data):
    sock.sendall(deflate.compress(data) + deflate.flush(zlib.Z_SYNC_FLUSH))


def readline():
    global pending
    while b"\r\n" not in pending:
        chunk = sock.recv(65536)
        if not chunk:
            line, pending = pending, b""
            return line
        pending += inflate.decompress(chunk)
    line, pending = pending.split(b"\r\n", 1)
    return line + b"\r\n"


def read_exact(n):
    global pending
    while len(pending) < n:
        chunk = sock.recv(65536)
        if not chunk:
            break
        pending += inflate.decompress(chunk)
    out, pending = pending[:n], pending[n:]
    return out


result = {"compress": started.decode().strip()}
if MODE == "session":
    body = b"Subject: through deflate\r\n\r\n" + b"The same words again and again. " * 20000 + b"\r\n"
    send(b"c APPEND INBOX {%d+}\r\n" % len(body) + body + b"\r\n")
    result["append"] = until(b"c", readline).decode().strip().splitlines()[-1]
    send(b"d SELECT INBOX\r\n")
    result["select"] = until(b"d", readline).decode().strip().splitlines()[-1]
    send(b"e FETCH 1 BODY.PEEK[]\r\n")
    head = readline()
    size = int(head.rsplit(b"{", 1)[1].split(b"}")[0])
    fetched = read_exact(size)
    rest = until(b"e", readline)
    result["fetched_intact"] = fetched == body
    result["fetch"] = rest.decode().strip().splitlines()[-1]
    send(b"f COMPRESS DEFLATE\r\n")
    result["again"] = until(b"f", readline).decode().strip().splitlines()[-1]
    send(b"g LOGOUT\r\n")
    result["logout"] = until(b"g", readline).decode().strip().splitlines()[-1]
elif MODE == "pipelined":
    send(b"c NOOP\r\n")
    heard = until(b"c", readline)
    result["after"] = heard.decode(errors="replace").strip().splitlines()[-1]
    result["pipelined_answered"] = b"x " in heard
else:
    # One line of 200 MB, sent compressed in pieces; the server ends the session at its line
    # limit, and what it inflated is bounded by that limit, not by what was sent.
    piece = deflate.compress(b"a" * (1 << 20))
    sent = 0
    try:
        for _ in range(200):
            sock.sendall(piece)
            sent += len(piece)
        sock.sendall(deflate.flush(zlib.Z_SYNC_FLUSH) + b"")
        answer = until(b"h", readline)
    except (BrokenPipeError, ConnectionResetError, ssl.SSLError, OSError) as e:
        answer = ("<%s>" % type(e).__name__).encode()
    result["bomb_compressed_bytes_sent"] = sent
    result["bomb_answer"] = answer.decode(errors="replace")[-200:]
print(json.dumps(result))

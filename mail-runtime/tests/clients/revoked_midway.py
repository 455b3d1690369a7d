"""Starts a long command with a password over implicit TLS and reads its answer slowly; told
"revoked" on stdin (once the caller revoked that password), keeps reading and reports what
still arrived.

usage: revoked_midway.py pop3|imap|smtp HOST PORT USER PASSWORD COUNT
pop3: pipelines RETR 1..COUNT, DELE 1..COUNT, QUIT. imap: LOGIN, SELECT INBOX, FETCH 1:COUNT
BODY.PEEK[]. smtp: AUTH PLAIN, MAIL, RCPT, DATA, then a body line every 200 ms, never the end.
Prints "started" once the answer flows (smtp: once DATA is accepted), then one JSON line:
{"bytes_after": N, "completed": bool, "refused": "<the server's last line>", "ms": N}
"""
import base64
import json
import socket
import ssl
import sys
import time

kind, host, port, user, password, count = sys.argv[1:7]
count = int(count)
context = ssl.create_default_context()
context.check_hostname = False
context.verify_mode = ssl.CERT_NONE  # the dev runtime's certificate is self-signed
conn = context.wrap_socket(socket.create_connection((host, int(port)), timeout=30))
reader = conn.makefile("rb")


def line():
    return reader.readline().decode(errors="replace").rstrip("\r\n")


line()  # greeting
if kind == "pop3":
    conn.sendall(f"USER {user}\r\nPASS {password}\r\n".encode())
    line(); assert line().startswith("+OK"), "POP3 login"
    batch = "".join(f"RETR {n}\r\n" for n in range(1, count + 1))
    batch += "".join(f"DELE {n}\r\n" for n in range(1, count + 1)) + "QUIT\r\n"
    conn.sendall(batch.encode())
    done_marker = b"signing off"
elif kind == "imap":
    conn.sendall(f'a LOGIN "{user}" "{password}"\r\n'.encode())
    while not line().startswith("a OK"):
        pass
    conn.sendall(b"b SELECT INBOX\r\n")
    while not line().startswith("b OK"):
        pass
    conn.sendall(f"c FETCH 1:{count} BODY.PEEK[]\r\n".encode())
    done_marker = b"c OK"
else:
    plain = base64.b64encode(f"\0{user}\0{password}".encode()).decode()
    conn.sendall(f"EHLO c.example\r\nAUTH PLAIN {plain}\r\n".encode())
    while not line().startswith("235"):
        pass
    conn.sendall(f"MAIL FROM:<{user}>\r\nRCPT TO:<{user}>\r\nDATA\r\n".encode())
    while not line().startswith("354"):
        pass
    done_marker = b"250 "

if kind != "smtp":
    # A slow reader: the server fills the socket's buffers and waits mid-command.
    reader.read1(65536)
    time.sleep(0.5)
print("started", flush=True)
assert sys.stdin.readline().strip() == "revoked"
revoked = time.monotonic()
received = b""
conn.settimeout(0.2 if kind == "smtp" else 1)
while time.monotonic() - revoked < 30:
    try:
        if kind == "smtp":
            conn.sendall(b"a line of a message that never ends\r\n")
        chunk = reader.read1(65536)
    except socket.timeout:
        continue
    except (ConnectionError, ssl.SSLError, OSError):
        break
    if not chunk:
        break
    received += chunk
last = [l for l in received.split(b"\r\n") if l][-1:] or [b""]
print(json.dumps({
    "bytes_after": len(received),
    "completed": done_marker in received,
    "refused": last[0][-200:].decode(errors="replace"),
    "ms": int((time.monotonic() - revoked) * 1000),
}), flush=True)

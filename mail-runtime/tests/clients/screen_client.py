"""An SMTP client from outside for the screening tests, with smtplib.

usage: screen_client.py HOST PORT SOURCE_IP HELO RCPT [--early] [--retry-after N]
Connects from SOURCE_IP (a loopback address), says HELO, MAIL FROM:<sender@outside.example.org>,
RCPT TO:<RCPT> and, if taken, sends a short message. --early sends EHLO before the banner.
--retry-after N: when RCPT gets a 4xx, waits N seconds and tries once more in a new session.
Prints one JSON line: {"greeting": code, "mail": code, "rcpt": [codes], "text": last reply}.
"""
import json
import smtplib
import socket
import sys
import time

host, port, source, helo, rcpt = sys.argv[1:6]
options = sys.argv[6:]
out = {"rcpt": []}

if "--early" in options:
    s = socket.create_connection((host, int(port)), timeout=20, source_address=(source, 0))
    s.sendall(b"EHLO early.example.org\r\n")
    data = s.recv(1024).decode(errors="replace")
    out["greeting"] = int(data[:3]) if data[:3].isdigit() else None
    out["text"] = data.strip()
    print(json.dumps(out))
    sys.exit(0)

retry = int(options[options.index("--retry-after") + 1]) if "--retry-after" in options else None
for attempt in range(2 if retry is not None else 1):
    s = smtplib.SMTP(timeout=20, source_address=(source, 0))
    code, _ = s.connect(host, int(port))
    out["greeting"] = code
    s.ehlo(helo)
    code, text = s.mail("sender@outside.example.org")
    out["mail"] = code
    out["text"] = text.decode(errors="replace")
    if code == 250:
        code, text = s.rcpt(rcpt)
        out["rcpt"].append(code)
        out["text"] = text.decode(errors="replace")
        if code == 250:
            s.data(b"Subject: screened\r\n\r\nhello\r\n")
    try:
        s.quit()
    except smtplib.SMTPServerDisconnected:
        pass
    if retry is None or out["rcpt"][-1:] != [451]:
        break
    time.sleep(retry)
print(json.dumps(out))

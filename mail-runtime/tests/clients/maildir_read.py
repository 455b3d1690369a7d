"""Reads a Maildir with Python's mailbox module and prints each message's headers as JSON."""
import json
import mailbox
import sys

box = mailbox.Maildir(sys.argv[1], factory=None, create=False)
out = []
for key, message in box.items():
    out.append(
        {
            "subject": message["Subject"],
            "from": message["From"],
            "received": message.get_all("Received") or [],
            "body": message.get_payload(),
        }
    )
print(json.dumps(out))

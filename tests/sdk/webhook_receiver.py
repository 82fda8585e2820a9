"""A webhook receiver built on the Standard Webhooks reference library (PyPI `standardwebhooks`):
verifies every request it gets with each secret of a file (one per line, read at each request:
the endpoint's secret is known only once the endpoint exists, which needs this receiver's port),
answers 204 when one of them verifies and 401 otherwise, and prints one JSON line per request:
{"id": ..., "type": ..., "verified": [bool per secret]}.

Usage: webhook_receiver.py SECRETS_FILE; prints the port it listens on first."""

import json
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer

from standardwebhooks.webhooks import Webhook

SECRETS_FILE = sys.argv[1]


class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        headers = {name.lower(): value for name, value in self.headers.items()}
        verified = []
        with open(SECRETS_FILE, encoding="utf-8") as secrets:
            known = [line.strip() for line in secrets if line.strip()]
        for secret in known:
            try:
                Webhook(secret).verify(body, headers)
                verified.append(True)
            except Exception:  # the library raises WebhookVerificationError
                verified.append(False)
        event = json.loads(body)
        print(json.dumps({"id": headers.get("webhook-id"), "type": event.get("type"),
                          "verified": verified}), flush=True)
        self.send_response(204 if any(verified) else 401)
        self.end_headers()

    def log_message(self, *args):
        pass


server = HTTPServer(("127.0.0.1", 0), Handler)
print(server.server_address[1], flush=True)
server.serve_forever()

"""Encodes one login.completed with the official CloudEvents Python SDK, in binary and in
structured content mode, and prints both as JSON: {"binary": {"headers", "body"},
"structured": {"headers", "body"}} (bodies as text). The integration test
`content_modes::the_cloudevents_sdk_s_messages_are_decided_in_both_modes` publishes them to
RabbitMQ, headers as AMQP headers, as the SDK's binary mode puts the attributes in `ce-` headers.

Usage: encode_login.py ID EXTERNAL_ID EMAIL
"""

import json
import sys

from cloudevents.conversion import to_binary, to_structured
from cloudevents.http import CloudEvent


def main() -> None:
    event_id, external_id, email = sys.argv[1:4]
    attributes = {
        "specversion": "1.0",
        "id": event_id,
        "source": "urn:cloudevents-python-sdk",
        "type": "login.completed",
        "datacontenttype": "application/json",
    }
    data = {
        "user_pool_id": "pool-1",
        "connection": "plain",
        "external_id": external_id,
        "profile": {"email": email, "email_verified": True},
    }
    encoded = {}
    for mode, encode in (("binary", to_binary), ("structured", to_structured)):
        headers, body = encode(CloudEvent(attributes, data))
        encoded[mode] = {
            "headers": {k.lower(): v for k, v in headers.items()},
            "body": body.decode("utf-8") if isinstance(body, bytes) else body,
        }
    json.dump(encoded, sys.stdout)


if __name__ == "__main__":
    main()

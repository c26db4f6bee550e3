#!/usr/bin/env python3
"""A Tether HTTP agent in the Python standard library alone.

For hosts that cannot hold a gRPC stream: it enrols once with a join token
(getting a node id and a heartbeat secret) and then posts its report as
signed heartbeats. The signature is

    x-tether-signature: hex(HMAC-SHA256(secret, timestamp "." nonce "." body))

over the raw body, with x-tether-timestamp (Unix seconds, within 5 minutes of
the control plane's clock) and x-tether-nonce (16 to 128 of A-Z a-z 0-9 - _,
never reused). See docs/protocol.md, "HTTP agents".

    http_agent.py enroll --url http://127.0.0.1:8080 --join-token "$JOIN" --state agent.json
    http_agent.py beat --state agent.json --report report.json --count 3

The state file holds the secret: it is written with mode 0600.
"""

import argparse
import hashlib
import hmac
import json
import os
import secrets
import socket
import ssl
import sys
import time
import urllib.error
import urllib.request


def sign(secret: bytes, timestamp: str, nonce: str, body: bytes) -> str:
    """The x-tether-signature of a heartbeat."""
    message = timestamp.encode() + b"." + nonce.encode() + b"." + body
    return hmac.new(secret, message, hashlib.sha256).hexdigest()


def signed_headers(secret: bytes, node_id: str, body: bytes, now: float = None) -> dict:
    """The headers of a heartbeat carrying `body`, with a fresh nonce."""
    timestamp = str(int(time.time() if now is None else now))
    nonce = secrets.token_urlsafe(24)
    return {
        "content-type": "application/json",
        "x-tether-node": node_id,
        "x-tether-timestamp": timestamp,
        "x-tether-nonce": nonce,
        "x-tether-signature": sign(secret, timestamp, nonce, body),
    }


def post(url: str, body: bytes, headers: dict, cacert: str = None):
    """POSTs `body`; returns (status, decoded JSON answer)."""
    context = ssl.create_default_context(cafile=cacert) if url.startswith("https:") else None
    req = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=10, context=context) as resp:
            return resp.status, json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def enroll(args) -> int:
    labels = dict(kv.split("=", 1) for kv in args.label)
    body = json.dumps({
        "join_token": args.join_token,
        "hostname": args.hostname or socket.gethostname(),
        "os": sys.platform,
        "agent_version": "http-agent.py/1",
        "labels": labels,
    }).encode()
    url = args.url.rstrip("/")
    status, answer = post(url + "/v1/agent/enroll", body, {"content-type": "application/json"}, args.cacert)
    if status != 200:
        print(f"enrolment refused ({status}): {answer.get('message')}", file=sys.stderr)
        return 1
    state = {"url": url, "node_id": answer["node_id"], "secret": answer["secret"], "cacert": args.cacert,
             "heartbeat_interval_seconds": answer["heartbeat_interval_seconds"]}
    fd = os.open(args.state, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(state, f)
    print(answer["node_id"])
    return 0


def beat(args) -> int:
    with open(args.state) as f:
        state = json.load(f)
    secret = bytes.fromhex(state["secret"])
    with open(args.report, "rb") as f:
        body = f.read()
    interval = args.interval or state["heartbeat_interval_seconds"]
    count = 0
    while True:
        headers = signed_headers(secret, state["node_id"], body)
        status, answer = post(state["url"] + "/v1/agent/heartbeat", body, headers, state.get("cacert"))
        if status != 200:
            print(f"heartbeat refused ({status}): {answer.get('message')}", file=sys.stderr)
            return 1
        count += 1
        if args.count and count >= args.count:
            return 0
        time.sleep(interval)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    e = sub.add_parser("enroll", help="enrol with a join token and write the state file")
    e.add_argument("--url", required=True, help="the control plane's HTTP URL")
    e.add_argument("--join-token", required=True)
    e.add_argument("--state", required=True, help="where to keep the node id and secret (0600)")
    e.add_argument("--hostname")
    e.add_argument("--label", action="append", default=[], help="k=v, repeatable")
    e.add_argument("--cacert", help="CA certificate (PEM) to trust for https")
    b = sub.add_parser("beat", help="post the report as signed heartbeats")
    b.add_argument("--state", required=True)
    b.add_argument("--report", required=True, help="a JSON file: the report, posted as it is")
    b.add_argument("--count", type=int, default=0, help="stop after this many (0: never)")
    b.add_argument("--interval", type=float, help="seconds between beats (default: what the control plane said)")
    args = parser.parse_args()
    return enroll(args) if args.command == "enroll" else beat(args)


if __name__ == "__main__":
    sys.exit(main())

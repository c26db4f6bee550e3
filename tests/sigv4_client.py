"""Signs one REST request with botocore's SigV4Auth (as AWS SDKs and
object-storage gateways sign them), optionally changes one part of it after
signing, sends it, and prints {"status", "body"} as JSON.

Usage: sigv4_client.py '{"base": "http://127.0.0.1:8080", "method": "GET",
  "path": "/v1/jobs", "query": "", "body": "", "key": "ak-...",
  "secret": "...", "region": "local", "tamper": null, "skew_seconds": 0}'

tamper: null, "header", "body", "path" (to "tampered_path"), "query" or "date".
"""

import datetime
import json
import sys
import types
import urllib.error
import urllib.request

import botocore.auth
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

a = json.loads(sys.argv[1])

real = datetime.datetime
skew = datetime.timedelta(seconds=a.get("skew_seconds", 0))


class Shifted(real):
    @classmethod
    def utcnow(cls):
        return real.utcnow() + skew


botocore.auth.datetime = types.SimpleNamespace(datetime=Shifted, timedelta=datetime.timedelta)

url = a["base"] + a["path"] + ("?" + a["query"] if a.get("query") else "")
body = a.get("body", "").encode()
headers = {"x-tether-note": "signed"}
if body:
    headers["content-type"] = "application/json"
req = AWSRequest(method=a["method"], url=url, data=body, headers=headers)
SigV4Auth(Credentials(a["key"], a["secret"]), "tether", a["region"]).add_auth(req)
p = req.prepare()
send_url, send_body, send_headers = p.url, p.body or b"", dict(p.headers)

tamper = a.get("tamper")
if tamper == "header":
    send_headers["x-tether-note"] = "changed"
elif tamper == "body":
    send_body = send_body.replace(b"/bin/true", b"/bin/false")
elif tamper == "path":
    send_url = send_url.replace(a["path"], a["tampered_path"], 1)
elif tamper == "query":
    send_url = send_url + ("&" if "?" in send_url else "?") + "pageSize=1"
elif tamper == "date":
    d = send_headers["X-Amz-Date"]
    send_headers["X-Amz-Date"] = d[:-3] + ("00Z" if not d.endswith("00Z") else "01Z")

r = urllib.request.Request(send_url, data=send_body or None, method=a["method"], headers=send_headers)
try:
    with urllib.request.urlopen(r, timeout=10) as resp:
        print(json.dumps({"status": resp.status, "body": resp.read().decode()}))
except urllib.error.HTTPError as e:
    print(json.dumps({"status": e.code, "body": e.read().decode()}))

#!/usr/bin/env python3
"""botocore's SigV4 signer as the reference for the Rust one (tests/integration/sources/sigv4.rs).

Reads a JSON array of cases on stdin and prints a JSON array of results, in the same order.

A case:
  signer        "s3" (botocore.auth.S3SigV4Auth) or "sigv4" (botocore.auth.SigV4Auth)
  method, scheme ("https" / "http"), host (as in the URL, with a port when it has one)
  path_prefix   for "s3": what comes before the key ("/" virtual-hosted, "/bucket/" path style)
  key           for "s3": the object key, unencoded; encoded as botocore's S3 serializer
                encodes a greedy {Key+} label (percent_encode(key, safe="/~"))
  path          for "sigv4": the request path
  query         [[name, value], ...] unencoded (request.params)
  headers       [[name, value], ...] the request's own headers
  body          the body, UTF-8 text
  payload_hash  for "s3": "UNSIGNED-PAYLOAD" turns payload signing off, anything else keeps it on
                (botocore then hashes the body itself)
  service, region, access_key_id, secret_access_key, session_token (null for none)
  amz_date      the signing time, YYYYMMDDTHHMMSSZ: botocore's clock is stopped there

A result: path (the encoded path the URL carries), canonical_request, string_to_sign, signature,
authorization, and headers: the X-Amz-Date, X-Amz-Security-Token and X-Amz-Content-SHA256 that
add_auth set (absent ones left out).
"""

import datetime
import json
import sys
from unittest import mock

import botocore.auth
from botocore.auth import UNSIGNED_PAYLOAD, S3SigV4Auth, SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials
from botocore.utils import percent_encode

ADDED_HEADERS = ("X-Amz-Date", "X-Amz-Security-Token", "X-Amz-Content-SHA256")


def recording(made, step, method):
    def record(*arguments):
        if step in made:
            raise SystemExit(f"add_auth computed {step} twice")
        made[step] = method(*arguments)
        return made[step]

    return record


def sign(case):
    if case["signer"] == "s3":
        path = case["path_prefix"] + percent_encode(case["key"], safe="/~")
        signer_class = S3SigV4Auth
    elif case["signer"] == "sigv4":
        path = case["path"]
        signer_class = SigV4Auth
    else:
        raise SystemExit(f"unknown signer {case['signer']!r}")
    headers = dict(case["headers"])
    if len(headers) != len(case["headers"]):
        raise SystemExit("a header name is repeated: AWSRequest takes each name once")
    request = AWSRequest(
        method=case["method"],
        url=f"{case['scheme']}://{case['host']}{path}",
        headers=headers,
        data=case["body"].encode("utf-8"),
        params=[(name, value) for name, value in case["query"]],
    )
    if case["signer"] == "s3":
        signing = case["payload_hash"] != UNSIGNED_PAYLOAD
        request.context["client_config"] = Config(s3={"payload_signing_enabled": signing})
    credentials = Credentials(case["access_key_id"], case["secret_access_key"], case["session_token"])
    auth = signer_class(credentials, case["service"], case["region"])
    # add_auth computes the three steps but returns none of them: record each as it is made.
    made = {}
    for step in ("canonical_request", "string_to_sign", "signature"):
        setattr(auth, step, recording(made, step, getattr(auth, step)))
    stopped = datetime.datetime.strptime(case["amz_date"], "%Y%m%dT%H%M%SZ")
    # add_auth reads the clock through this name; everything else it does is botocore's own.
    with mock.patch.object(botocore.auth, "get_current_datetime", lambda *_, **__: stopped):
        auth.add_auth(request)
    canonical_request, string_to_sign, signature = (
        made["canonical_request"],
        made["string_to_sign"],
        made["signature"],
    )
    authorization = request.headers["Authorization"]
    if not authorization.endswith(f"Signature={signature}"):
        raise SystemExit(f"botocore's Authorization {authorization!r} does not carry {signature}")
    return {
        "path": path,
        "canonical_request": canonical_request,
        "string_to_sign": string_to_sign,
        "signature": signature,
        "authorization": authorization,
        "headers": {name: request.headers[name] for name in ADDED_HEADERS if name in request.headers},
    }


def main():
    cases = json.load(sys.stdin)
    json.dump([sign(case) for case in cases], sys.stdout, ensure_ascii=False)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""A minimal Lambda custom runtime for tests/packaging/lambda_rie.sh: for each invocation it
reads /v1/secrets from the clef-agent extension, as a function would, and returns the answer."""
import os
import urllib.request

api = f"http://{os.environ['AWS_LAMBDA_RUNTIME_API']}/2018-06-01/runtime/invocation/"
while True:
    with urllib.request.urlopen(api + "next") as event:
        request_id = event.headers["Lambda-Runtime-Aws-Request-Id"]
        event.read()
    secrets = urllib.request.Request(
        "http://127.0.0.1:7779/v1/secrets",
        headers={"Authorization": "Bearer " + os.environ["CLEF_AGENT_TOKEN"]},
    )
    with urllib.request.urlopen(secrets) as answer:
        body = answer.read()
    response = urllib.request.Request(api + request_id + "/response", data=body, method="POST")
    urllib.request.urlopen(response).read()

#!/usr/bin/env python3
"""Writes the seed inputs of the fuzz targets into fuzz/corpus/<target>/ (seed-*.bin files).

The committed corpus already holds these seeds, minimized together with what the fuzzer found
(`cargo fuzz cmin`); run this again after `make fixtures` regenerated the fixtures, then run
`make fuzz`. Needs only python3; with the age CLI installed the decrypted plaintexts of the
fixtures are added too.

  artifact  every JSON file under tests/fixtures/artifacts, valid and invalid
  decrypt   the binary age files inside those artifacts (base64-decoded `ciphertext`), the
            envelope artifacts as `provider\\nkeyId\\nwrappedKey\\nalgorithm\\niv\\nauthTag\\n`
            followed by the raw ciphertext, and plaintexts good and bad
  routing   HTTP request heads for every route and guard, and streams: pipelined requests,
            HTTP/1.0, HEAD, bodies, Expect, HTTP/2.0 and 0.9, malformed and oversized heads
"""

import base64
import hashlib
import json
import pathlib
import shutil
import subprocess

ROOT = pathlib.Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"
CORPUS = ROOT / "fuzz" / "corpus"
TOKEN = "fuzz-token-0123456789"  # fuzz_targets/routing.rs


def write(target: str, data: bytes) -> None:
    directory = CORPUS / target
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"seed-{hashlib.sha1(data).hexdigest()[:16]}.bin").write_bytes(data)


def artifacts():
    for path in sorted((FIXTURES / "artifacts").rglob("*.json")):
        yield path, path.read_bytes()


def artifact_seeds() -> None:
    for _, data in artifacts():
        write("artifact", data)


def decrypt_seeds() -> None:
    age = shutil.which("age")
    for path, data in artifacts():
        try:
            artifact = json.loads(data)
            ciphertext = base64.b64decode(artifact["ciphertext"], validate=True)
        except (ValueError, KeyError, TypeError):
            continue
        envelope = artifact.get("envelope")
        if isinstance(envelope, dict):
            fields = [envelope.get(name, "") for name in ("provider", "keyId", "wrappedKey", "algorithm", "iv", "authTag")]
            if all(isinstance(field, str) for field in fields):
                write("decrypt", "\n".join(fields).encode() + b"\n" + ciphertext)
            continue
        write("decrypt", ciphertext)
        if age and ciphertext.startswith(b"age-encryption.org/v1"):
            result = subprocess.run(
                [age, "-d", "-i", str(FIXTURES / "keys" / "demo.agekey")], input=ciphertext, capture_output=True
            )
            if result.returncode == 0:
                write("decrypt", result.stdout)
    write("decrypt", (FIXTURES / "plaintext.json").read_bytes())
    for plaintext in [
        b'{"db":{"a":"1","a":"2"}}',
        b'{"db":{},"db":{}}',
        b'{"db":{"PORT":5432,"x":null,"y":true,"z":[1,{"k":"v"}]}}',
        b'{"db":"s3cret"}',
        b'{"a":{"b":"c"}} trailing',
        b'{"n\\u00e9":{"k\\"ey":"v\\u0000al"}}',
    ]:
        write("decrypt", plaintext)


def routing_seeds() -> None:
    bearer = f"Authorization: Bearer {TOKEN}\r\n"
    heads = [
        f"GET /v1/secrets HTTP/1.1\r\nHost: 127.0.0.1:7779\r\n{bearer}\r\n",
        f"HEAD /v1/keys HTTP/1.1\r\nHost: localhost\r\n{bearer}\r\n",
        f"GET /v1/secrets/database HTTP/1.1\r\nHost: [::1]:7779\r\n{bearer}\r\n",
        f"GET /v1/secrets/database/DB_PASSWORD?x=1 HTTP/1.1\r\nHost: 127.0.0.1\r\n{bearer}\r\n",
        f"GET /v1/secrets/unicode/GREETING/ HTTP/1.1\r\nhost: LOCALHOST:80\r\n{bearer}\r\n",
        f"GET /v1/secrets/zeta__Z_KEY HTTP/1.1\r\nHost: 127.0.0.1:7779\r\n{bearer}\r\n",
        f"GET /v1/secrets/data%62ase/DB%5FHOST#frag HTTP/1.1\r\nHost: 127.0.0.1:7779\r\n{bearer}\r\n",
        f"GET /v1/secrets/%ff/%zz HTTP/1.1\r\nHost: 127.0.0.1:7779\r\n{bearer}\r\n",
        "GET /v1/health HTTP/1.1\r\nHost: 127.0.0.1:7779\r\n\r\n",
        "GET /v1/ready/ HTTP/1.1\r\nHost: localhost:7779\r\n\r\n",
        "GET /v1/secrets HTTP/1.1\r\nHost: 127.0.0.1:7779\r\nAuthorization: Bearer wrong\r\n\r\n",
        "GET /v1/secrets HTTP/1.1\r\nHost: 127.0.0.1:7779\r\nAuthorization: bearer  " + TOKEN + " \r\n\r\n",
        f"GET /v1/keys HTTP/1.1\r\nHost: 127.0.0.1:7779\r\n{bearer}X-Forwarded-For: 10.0.0.1\r\n\r\n",
        f"GET /v1/keys HTTP/1.1\r\nHost: 127.0.0.1:7779\r\n{bearer}Forwarded: for=10.0.0.1\r\n\r\n",
        f"GET /v1/secrets HTTP/1.1\r\nHost: evil.example:7779\r\n{bearer}\r\n",
        f"GET /v1/secrets HTTP/1.1\r\nHost: 127.0.0.1:7779\r\nHost: localhost\r\n{bearer}\r\n",
        f"GET /v1/secrets HTTP/1.1\r\n{bearer}\r\n",
        f"POST /v1/secrets HTTP/1.1\r\nHost: 127.0.0.1:7779\r\n{bearer}\r\n",
        f"GET /v2/secrets HTTP/1.1\r\nHost: 127.0.0.1:99999\r\n{bearer}\r\n",
        f"GET //v1/secrets/a/b/c HTTP/1.1\r\nHost: 127.0.0.1:\r\n{bearer}\r\n",
    ]
    host = "Host: 127.0.0.1:7779\r\n"
    get = f"GET /v1/secrets/database/DB_HOST HTTP/1.1\r\n{host}{bearer}\r\n"
    streams = [
        # pipelined requests, keep-alive and close
        get + "GET /v1/health HTTP/1.1\r\n" + host + "\r\n" + f"HEAD /v1/keys HTTP/1.1\r\n{host}{bearer}\r\n",
        get + f"GET /v1/keys HTTP/1.1\r\n{host}Connection: close\r\n\r\n" + get,
        f"GET /v1/ready HTTP/1.0\r\n{host}\r\n" + get,
        f"GET /v1/secrets HTTP/1.0\r\n{host}{bearer}Connection: keep-alive\r\n\r\n" + get,
        f"HEAD /v1/secrets HTTP/1.0\r\n{host}{bearer}\r\n",
        f"GET /v1/secrets HTTP/1.1\r\n{host}{bearer}TE: chunked\r\n\r\n" + get,
        f"GET /v1/secrets HTTP/1.1\r\n{host}{bearer}Connection: Upgrade\r\nUpgrade: websocket\r\n\r\n" + get,
        # bodies: refused with 400 and close, nothing after them answered
        get + f"POST /v1/secrets HTTP/1.1\r\n{host}{bearer}Content-Length: 5\r\n\r\nhello" + get,
        get + f"GET /v1/keys HTTP/1.1\r\n{host}Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n" + get,
        f"GET /v1/keys HTTP/1.1\r\n{host}Content-Length: 0\r\n\r\n" + get,
        f"GET /v1/keys HTTP/1.1\r\n{host}Content-Length: -1\r\n\r\n" + get,
        f"GET /v1/keys HTTP/1.1\r\n{host}Content-Length: 0\r\nContent-Length: 7\r\n\r\n" + get,
        # Expect, HTTP/2.0 (505 and on), HTTP/0.9, malformed lines
        f"GET /v1/keys HTTP/1.1\r\n{host}Expect: 100-continue\r\n\r\n" + get,
        f"GET /v1/keys HTTP/1.1\r\n{host}Expect: 200-ok\r\n\r\n" + get,
        f"GET /v1/keys HTTP/2.0\r\n{host}\r\nHEAD /v1/health HTTP/2.0\r\n{host}\r\n" + get,
        f"GET /v1/health HTTP/0.9\r\n{host}\r\n",
        f"GET /v1/health HTTP/1.1\n{host}\r\n" + get,
        f"GET /v1/health\r\n{host}\r\n",
        # a bare LF does not end a line: this is one Host field, no body (found by the fuzzer)
        f"GET /v1/keys HTTP/1.1\r\nHost: 127.0\nContent-Length: 7\r\n\r\n" + get,
        f"\r\nGET /v1/health HTTP/1.1\r\n{host}\r\n",
        f"GET /v1/health HTTP/1.1\r\nBad Header: x\r\n{host}\r\n",
        # limits: a line over 8 KiB, 101 fields, a head over 64 KiB (431)
        f"GET /v1/health?{'a' * 8300} HTTP/1.1\r\n{host}\r\n",
        f"GET /v1/health HTTP/1.1\r\n{host}" + "X-A: b\r\n" * 100 + "\r\n",
        f"GET /v1/health HTTP/1.1\r\n{host}" + f"X-A: {'b' * 8000}\r\n" * 9 + "\r\n",
    ]
    for data in heads + streams:
        write("routing", data.encode())
    write("routing", f"GET /v1/health HTTP/1.1\r\n{host}X-\xc3\xa9: 1\r\n\r\n".encode("latin-1"))


if __name__ == "__main__":
    artifact_seeds()
    decrypt_seeds()
    routing_seeds()
    for target in ("artifact", "decrypt", "routing"):
        files = list((CORPUS / target).iterdir())
        print(f"{target}: {len(files)} files, {sum(f.stat().st_size for f in files)} bytes")

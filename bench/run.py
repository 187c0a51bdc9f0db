#!/usr/bin/env python3
"""Footprint benchmark of the release binary (SPEC §9): executable size, idle RSS with a
1 000-key artifact, and spawn-to-ready time with a file source (median of 10 runs).

Usage: python3 bench/run.py target/release/clef-agent
Needs the age CLI (age, age-keygen) to build the artifact.
"""
import base64
import hashlib
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

RUNS = 10
TOKEN = "bench-token"


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def build_artifact(directory, namespaces, keys_per_namespace):
    key_file = os.path.join(directory, "bench.agekey")
    subprocess.run(["age-keygen", "-o", key_file], check=True, capture_output=True)
    recipient = subprocess.run(["age-keygen", "-y", key_file], check=True, capture_output=True, text=True).stdout.strip()
    plaintext = {
        f"namespace{n:02d}": {f"KEY_{k:04d}": f"value-{n:02d}-{k:04d}-" + "x" * 24 for k in range(keys_per_namespace)}
        for n in range(namespaces)
    }
    encrypted = subprocess.run(["age", "-r", recipient], input=json.dumps(plaintext, separators=(",", ":")).encode(),
                               check=True, capture_output=True).stdout
    ciphertext = base64.b64encode(encrypted).decode()
    artifact = {
        "version": 1, "identity": "bench", "environment": "bench", "packedAt": "2026-11-24T12:00:00.000Z",
        "revision": "bench-1", "ciphertextHash": hashlib.sha256(ciphertext.encode()).hexdigest(),
        "ciphertext": ciphertext,
    }
    path = os.path.join(directory, "bench.age.json")
    with open(path, "w") as out:
        json.dump(artifact, out)
    return path, key_file


def start(binary, artifact, key_file, port):
    env = {"PATH": os.environ.get("PATH", ""), "CLEF_AGENT_SOURCE": artifact, "CLEF_AGENT_AGE_KEY_FILE": key_file,
           "CLEF_AGENT_TOKEN": TOKEN, "CLEF_AGENT_PORT": str(port)}
    began = time.perf_counter()
    process = subprocess.Popen([binary], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in process.stdout:
        if "Agent ready." in line:
            return process, time.perf_counter() - began
    raise SystemExit(f"agent did not become ready: {process.stderr.read()}")


def stop(process):
    process.terminate()
    process.wait(timeout=5)


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return -1


def main():
    binary = sys.argv[1] if len(sys.argv) > 1 else "target/release/clef-agent"
    with tempfile.TemporaryDirectory() as directory:
        artifact, key_file = build_artifact(directory, 10, 100)
        ready_times = []
        for _ in range(RUNS):
            process, elapsed = start(binary, artifact, key_file, free_port())
            ready_times.append(elapsed)
            stop(process)
        port = free_port()
        process, _ = start(binary, artifact, key_file, port)
        request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/secrets",
                                         headers={"Authorization": f"Bearer {TOKEN}"})
        body = urllib.request.urlopen(request).read()
        keys = sum(len(namespace) for namespace in json.loads(body).values())
        time.sleep(1)
        rss = rss_kib(process.pid)
        stop(process)
    size = os.path.getsize(binary)
    print(f"{'measure':<40} {'value':>14}  target")
    print(f"{'executable size':<40} {size / 1048576:>10.2f} MiB  <= 4 MiB")
    print(f"{f'idle RSS, {keys}-key artifact':<40} {rss / 1024:>10.2f} MiB  <= 4 MiB")
    print(f"{f'spawn-to-ready, median of {RUNS}':<40} {statistics.median(ready_times) * 1000:>11.1f} ms  <= 20 ms")
    print(f"{'spawn-to-ready, min / max':<40} {min(ready_times) * 1000:>5.1f} / {max(ready_times) * 1000:.1f} ms")


if __name__ == "__main__":
    main()

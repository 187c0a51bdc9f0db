#!/usr/bin/env python3
"""Benchmark of the release binary (SPEC §9): executable size, idle RSS with a 1 000-key
artifact, spawn-to-ready time with a file source (median of 10 runs), and `/v1/secrets` and
`/v1/health` throughput, p50/p99 latency and CPU per 1 000 requests at 1, 16 and 64 keep-alive
connections for a 30-key and a 5 000-key artifact (plus paced rows: 16 connections for the small
body, 64 for the 254 KiB one), each next to nginx serving the same bytes from a static file over
keep-alive (the practical loopback limit).

Usage: python3 bench/run.py target/static/clef-agent
Needs the age CLI (age, age-keygen), wrk and nginx (`make bench` installs them). With two or
more cores the agent (and nginx) run on core 0 and wrk on core 1 (taskset).
"""
import base64
import hashlib
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

RUNS = 10
TOKEN = "bench-token"
LOAD_SECONDS = int(os.environ.get("BENCH_SECONDS", "5"))
CONNECTIONS = (1, 16, 64)
# The TypeScript agent on this machine (SPEC §9): req/s and CPU ms per 1 000 small requests.
TS_REQUESTS_PER_SECOND = (4600, 8100)
TS_CPU_MS_PER_1000 = (110, 220)


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


def pinned(command, core):
    """`command` pinned to `core` when the machine has more than one."""
    if (os.cpu_count() or 1) > 1 and shutil.which("taskset"):
        return ["taskset", "-c", str(core)] + command
    return command


def start(binary, artifact, key_file, port):
    env = {"PATH": os.environ.get("PATH", ""), "CLEF_AGENT_SOURCE": artifact, "CLEF_AGENT_AGE_KEY_FILE": key_file,
           "CLEF_AGENT_TOKEN": TOKEN, "CLEF_AGENT_PORT": str(port)}
    began = time.perf_counter()
    process = subprocess.Popen(pinned([binary], 0), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
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


def cpu_ms(pid):
    """User + system CPU time of `pid` so far, in milliseconds."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) * 1000 / os.sysconf("SC_CLK_TCK")


def tree_cpu_ms(pid):
    """CPU time of `pid` and its children (nginx's master and worker), in milliseconds."""
    with open(f"/proc/{pid}/task/{pid}/children") as children:
        return cpu_ms(pid) + sum(cpu_ms(int(child)) for child in children.read().split())


def to_ms(text):
    value, unit = re.match(r"([\d.]+)(us|ms|s)", text).groups()
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def wrk(url, connections, headers=(), script=None):
    """Requests/s, p50 ms, p99 ms, total requests and non-2xx answers of one wrk run."""
    command = ["wrk", "-t1", f"-c{connections}", f"-d{LOAD_SECONDS}s", "--latency"]
    for header in headers:
        command += ["-H", header]
    if script:
        command += ["-s", script]
    output = subprocess.run(pinned(command + [url], 1), check=True, capture_output=True, text=True).stdout
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))
    p50 = to_ms(re.search(r"50%\s+([\d.]+\w+)", output).group(1))
    p99 = to_ms(re.search(r"99%\s+([\d.]+\w+)", output).group(1))
    total = int(re.search(r"(\d+) requests in", output).group(1))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    return rate, p50, p99, total, int(errors.group(1)) if errors else 0


def nginx(directory, body, health):
    """nginx on a free port serving `body` (at /secrets) and `health` (at /health) as static
    files over keep-alive; (process, base url)."""
    root = os.path.join(directory, "nginx")
    os.makedirs(os.path.join(root, "www"), exist_ok=True)
    # nginx's worker runs as nobody when started by root: it must be able to read the file.
    for path in (directory, os.path.dirname(directory), root, os.path.join(root, "www")):
        os.chmod(path, 0o755)
    for name, content in (("secrets", body), ("health", health)):
        with open(os.path.join(root, "www", name), "wb") as out:
            out.write(content)
    port = free_port()
    config = os.path.join(root, "nginx.conf")
    with open(config, "w") as out:
        out.write(f"""daemon off; worker_processes 1; pid {root}/nginx.pid; error_log {root}/error.log;
events {{ worker_connections 1024; }}
http {{ access_log off; keepalive_requests 1000000; keepalive_timeout 65;
  default_type application/json;
  server {{ listen 127.0.0.1:{port}; root {root}/www; location / {{ }} }} }}
""")
    process = subprocess.Popen(pinned(["nginx", "-c", config, "-p", root], 0), stderr=subprocess.DEVNULL)
    for _ in range(100):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/secrets", timeout=2).read()
            return process, f"http://127.0.0.1:{port}"
        except OSError:
            time.sleep(0.05)
    raise SystemExit("nginx did not start")


def compare(agent_pid, agent_url, reference_pid, reference_url, connections, headers, script):
    """One row: the agent's (req/s, p50, p99, CPU ms per 1 000, errors), then nginx's
    (req/s, p50, p99, CPU ms per 1 000) on the same load."""
    before = cpu_ms(agent_pid)
    rate, p50, p99, total, errors = wrk(agent_url, connections, headers, script)
    cpu_per_1000 = (cpu_ms(agent_pid) - before) * 1000 / max(total, 1)
    before = tree_cpu_ms(reference_pid)
    ref_rate, ref_p50, ref_p99, ref_total, _ = wrk(reference_url, connections, (), script)
    ref_cpu_per_1000 = (tree_cpu_ms(reference_pid) - before) * 1000 / max(ref_total, 1)
    return (rate, p50, p99, cpu_per_1000, errors), (ref_rate, ref_p50, ref_p99, ref_cpu_per_1000)


def load_table(binary, directory):
    """The throughput rows: agent and nginx for each artifact size and connection count, and
    connections that pause 1 ms between requests (latency at a load below saturation, where
    wrk's closed loop does not measure its own queue): 16 for the small artifact, 64 for the
    large one."""
    rows = []
    paced = os.path.join(directory, "paced.lua")
    with open(paced, "w") as out:
        out.write("function delay()\n  return 1\nend\n")
    for namespaces, per_namespace in ((3, 10), (50, 100)):
        sub = os.path.join(directory, f"load-{namespaces * per_namespace}")
        os.makedirs(sub)
        artifact, key_file = build_artifact(sub, namespaces, per_namespace)
        port = free_port()
        process, _ = start(binary, artifact, key_file, port)
        auth = f"Authorization: Bearer {TOKEN}"
        secrets_url = f"http://127.0.0.1:{port}/v1/secrets"
        body = urllib.request.urlopen(urllib.request.Request(secrets_url, headers={"Authorization": f"Bearer {TOKEN}"})).read()
        health_url = f"http://127.0.0.1:{port}/v1/health"
        health = urllib.request.urlopen(health_url).read()
        keys = namespaces * per_namespace
        reference, reference_url = nginx(sub, body, health)
        try:
            runs = [(connections, None) for connections in CONNECTIONS] + [(16 if keys < 100 else 64, paced)]
            for connections, script in runs:
                agent, ref = compare(process.pid, secrets_url, reference.pid, f"{reference_url}/secrets",
                                     connections, [auth], script)
                size = f"{len(body) // 1024 or len(body)} {'KiB' if len(body) >= 1024 else 'B'}"
                rows.append((f"/v1/secrets {keys} keys ({size}){', paced' if script else ''}", connections, agent, ref))
                if script:
                    continue
                agent, ref = compare(process.pid, health_url, reference.pid, f"{reference_url}/health",
                                     connections, (), None)
                rows.append((f"/v1/health ({keys}-key artifact)", connections, agent, ref))
        finally:
            stop(process)
            reference.terminate()
            reference.wait(timeout=5)
    return rows


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
        rows = load_table(binary, directory)
    size = os.path.getsize(binary)
    print(f"{'measure':<40} {'value':>14}  target")
    print(f"{'executable size':<40} {size / 1048576:>10.2f} MiB  <= 4 MiB")
    print(f"{f'idle RSS, {keys}-key artifact':<40} {rss / 1024:>10.2f} MiB  <= 4 MiB")
    print(f"{f'spawn-to-ready, median of {RUNS}':<40} {statistics.median(ready_times) * 1000:>11.1f} ms  <= 20 ms")
    print(f"{'spawn-to-ready, min / max':<40} {min(ready_times) * 1000:>5.1f} / {max(ready_times) * 1000:.1f} ms")
    print()
    print(f"load: wrk, {LOAD_SECONDS} s per row, keep-alive; agent and nginx on core 0, wrk on core 1")
    print("each measure of the agent is followed by nginx's on the same load")
    print(f"{'endpoint':<40} {'conns':>5} {'req/s':>9} {'nginx':>9} {'ratio':>5} {'p50 ms':>7} {'nginx':>6}"
          f" {'p99 ms':>7} {'nginx':>6} {'CPU ms/1k':>9} {'nginx':>6} {'errors':>6}")
    for name, connections, agent, reference in rows:
        rate, p50, p99, cpu, errors = agent
        ref_rate, ref_p50, ref_p99, ref_cpu = reference
        print(f"{name:<40} {connections:>5} {rate:9.0f} {ref_rate:9.0f} {rate / ref_rate:5.2f} {p50:7.2f} {ref_p50:6.2f}"
              f" {p99:7.2f} {ref_p99:6.2f} {cpu:9.1f} {ref_cpu:6.1f} {errors:>6}")
    print()
    print(f"targets (SPEC §9): /v1/secrets >= 10x the TypeScript agent ({TS_REQUESTS_PER_SECOND[0]}-"
          f"{TS_REQUESTS_PER_SECOND[1]} req/s) and >= 0.5x nginx; CPU <= 1/10 of its {TS_CPU_MS_PER_1000[0]}-"
          f"{TS_CPU_MS_PER_1000[1]} ms per 1 000 requests; p99 < 1 ms at 16 connections")
    print("targets (SPEC §11): /v1/secrets >= 1.0x nginx for small bodies and >= 0.9x for 254 KiB at 16 and 64"
          " connections; p99 < 1 ms at 16 paced connections; CPU per 1 000 small requests <= nginx's")
    print("paced: each connection waits 1 ms after every answer (wrk -s with delay())")


if __name__ == "__main__":
    main()

#!/usr/bin/env bash
# Proves the static executable needs nothing else: copied alone into an empty directory, it runs
# there under chroot against a file artifact, serves /v1/secrets, answers its own healthcheck,
# and exits 0 on SIGTERM. Usage: static_isolation.sh target/static/clef-agent
set -euo pipefail
binary=${1:?usage: static_isolation.sh <static clef-agent>}
here=$(cd "$(dirname "$0")" && pwd)
fixtures=$here/../fixtures
fail() { echo "static_isolation: FAILED: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || fail "chroot needs root"
chroot=$(command -v chroot) || fail "chroot is required (coreutils)"

root=$(mktemp -d)
agent=
cleanup() { [ -n "$agent" ] && kill -9 "$agent" 2>/dev/null; rm -rf "$root"; }
trap cleanup EXIT
cp "$binary" "$root/clef-agent"
cp "$fixtures/artifacts/age-cli.json" "$root/artifact.json"
cp "$fixtures/keys/demo.agekey" "$root/agent.agekey"
[ "$(find "$root" -type f | wc -l)" = 3 ] || fail "the root should hold the binary, the artifact and the key only"

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
env -i CLEF_AGENT_SOURCE=/artifact.json CLEF_AGENT_AGE_KEY_FILE=/agent.agekey CLEF_AGENT_TOKEN=isolation-token \
  CLEF_AGENT_PORT="$port" "$chroot" "$root" /clef-agent > "$root.out" 2>&1 &
agent=$!

python3 - "$port" "$fixtures/plaintext.json" <<'PY' 2>/dev/null || { cat "$root.out" >&2; fail "/v1/secrets was not served from the chroot"; }
import sys, time, urllib.request
port, expected = sys.argv[1], open(sys.argv[2], "rb").read()
request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/secrets", headers={"Authorization": "Bearer isolation-token"})
deadline = time.time() + 10
while True:
    try:
        body = urllib.request.urlopen(request, timeout=2).read()
        break
    except OSError:
        if time.time() > deadline:
            raise
        time.sleep(0.05)
assert body == expected, body
PY
env -i CLEF_AGENT_PORT="$port" "$chroot" "$root" /clef-agent healthcheck || fail "healthcheck inside the chroot did not exit 0"
kill -TERM "$agent"
status=0
wait "$agent" || status=$?
agent=
[ "$status" = 0 ] || { cat "$root.out" >&2; fail "exit status $status after SIGTERM"; }
grep -q 'Shutdown complete.' "$root.out" || fail "no 'Shutdown complete.' line"
rm -f "$root.out"
echo "static_isolation: ok ($(stat -c %s "$binary") bytes, served /v1/secrets alone in a chroot)"

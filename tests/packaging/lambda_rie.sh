#!/usr/bin/env bash
# Runs the Lambda layer as an extension under AWS's Lambda Runtime Interface Emulator (the RIE,
# taken from the AWS SAM CLI wheel: lambda-rie.requirements.txt says why), in its own mount and
# network namespaces: the layer is unpacked into a fresh /opt as Lambda does, the emulator starts
# /opt/extensions/clef-agent through the real Extensions API, a minimal custom runtime
# (lambda_bootstrap.py) reads /v1/secrets from it on each invocation, and SIGTERM to the emulator
# sends the extension SHUTDOWN. Checks: the extension registers for INVOKE and SHUTDOWN, both
# invocations return the secrets, an artifact published between them is loaded on the second
# (CLEF_AGENT_CACHE_TTL=0: refresh on every invocation), the agent shuts down cleanly, and the
# token appears nowhere in the output.
# Usage: lambda_rie.sh <layer zip>   (root: unshare --mount --net)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
fail() { echo "lambda_rie: FAILED: $*" >&2; exit 1; }

if [ "${1:-}" = --inside ]; then
  # In the new namespaces: $2 the layer, $3 the emulator, $4 the work directory.
  layer=$2 rie=$3 work=$4
  ip link set lo up
  # Lambda unpacks layers into /opt; a tmpfs here leaves the host's /opt alone.
  mount -t tmpfs -o mode=0755 tmpfs /opt
  python3 - "$layer" <<'PY'
import os, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as layer:
    for info in layer.infolist():
        path = layer.extract(info, "/opt")
        os.chmod(path, (info.external_attr >> 16) & 0o7777)
PY
  [ -x /opt/extensions/clef-agent ] || fail "the layer did not give /opt/extensions/clef-agent"
  cp "$root/demo/demo.age.json" "$work/artifact.age.json"
  token=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
  # The function's environment, which Lambda also gives its extensions (README's example).
  export CLEF_AGENT_SOURCE=$work/artifact.age.json CLEF_AGENT_TOKEN=$token CLEF_AGENT_CACHE_TTL=0
  CLEF_AGENT_AGE_KEY=$(grep -v '^#' "$root/demo/demo.agekey")
  export CLEF_AGENT_AGE_KEY
  (cd "$work" && exec "$rie" "$here/lambda_bootstrap.py") > "$work/rie.log" 2>&1 &
  emulator=$!
  invoke() {
    python3 - "$1" <<'PY'
import sys, time, urllib.request
url = "http://127.0.0.1:8080/2015-03-31/functions/function/invocations"
deadline = time.monotonic() + 10
while True:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=b"{}"), timeout=10) as answer:
            open(sys.argv[1], "wb").write(answer.read())
            break
    except (ConnectionError, urllib.error.URLError):
        if time.monotonic() > deadline:
            raise
        time.sleep(0.05)
PY
  }
  invoke "$work/first.json" || { cat "$work/rie.log" >&2; fail "the first invocation failed"; }
  python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); assert isinstance(d, dict) and d, d' "$work/first.json" \
    || { cat "$work/first.json" "$work/rie.log" >&2; fail "the function did not return the secrets"; }
  # A new revision of the same ciphertext, published by rename as a deployment would.
  python3 - "$work/artifact.age.json" "$work/.next.age.json" <<'PY'
import json, sys
artifact = json.load(open(sys.argv[1]))
artifact["packedAt"] = "2026-11-25T12:00:00.000Z"
artifact["revision"] = "1732521600000-demo0002"
json.dump(artifact, open(sys.argv[2], "w"))
PY
  mv "$work/.next.age.json" "$work/artifact.age.json"
  invoke "$work/second.json" || { cat "$work/rie.log" >&2; fail "the second invocation failed"; }
  cmp -s "$work/first.json" "$work/second.json" || fail "the two invocations returned different secrets"
  kill -TERM "$emulator"
  status=0
  wait "$emulator" || status=$?
  log=$(cat "$work/rie.log")
  [ $status = 0 ] || { echo "$log" >&2; fail "the emulator exited $status after SIGTERM"; }
  for line in 'lifecycle: lambda-extension' 'External agent clef-agent' 'subscribed to [INVOKE SHUTDOWN]' \
    'Agent ready.' 'refreshed: revision 1732521600000-demo0002' 'Shutdown complete.'; do
    echo "$log" | grep -qF -- "$line" || { echo "$log" >&2; fail "the emulator's output lacks '$line'"; }
  done
  if echo "$log" | grep -qF -- "$token"; then fail "the token appears in the output"; fi
  echo "$log" | grep -E 'registered|INVOKE START|Shutdown' | sed 's/^/lambda_rie:   /'
  exit 0
fi

layer=$(realpath "${1:?usage: lambda_rie.sh <layer zip>}")
[ "$(id -u)" = 0 ] || fail "unshare --mount --net needs root"
for tool in unshare ip python3; do
  if ! command -v $tool >/dev/null; then
    command -v apt-get >/dev/null || fail "$tool is required: install util-linux, iproute2 and python3"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq util-linux iproute2 python3 >/dev/null
  fi
  command -v $tool >/dev/null || fail "installing util-linux, iproute2 and python3 did not provide $tool"
done
python3 -m pip --version >/dev/null 2>&1 || {
  command -v apt-get >/dev/null || fail "pip is required: install python3-pip"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-pip >/dev/null
}
python3 -m pip --version >/dev/null 2>&1 || fail "installing python3-pip did not provide python3 -m pip"
case $(uname -m) in
  x86_64) arch=x86_64 ;;
  aarch64) arch=arm64 ;;
  *) fail "the emulator is built for x86_64 and arm64 only, not $(uname -m)" ;;
esac

# The emulator, cached under target/ by the pinned requirement (its hash is checked by pip).
requirements=$here/lambda-rie.requirements.txt
cache=$root/target/lambda-rie/$(sha256sum "$requirements" | cut -c1-16)
rie=$cache/aws-lambda-rie-$arch
if [ ! -x "$rie" ]; then
  rm -rf "$root/target/lambda-rie" && mkdir -p "$cache/wheel"
  python3 -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: --require-hashes \
    -r "$requirements" -d "$cache/wheel" || fail "pip download of the AWS SAM CLI wheel (for its emulator) failed"
  python3 - "$cache/wheel" "$arch" "$rie" <<'PY' || fail "the AWS SAM CLI wheel holds no samcli/local/rapid/aws-lambda-rie-$arch"
import glob, os, sys, zipfile
wheel, = glob.glob(os.path.join(sys.argv[1], "*.whl"))
with zipfile.ZipFile(wheel) as archive, open(sys.argv[3] + ".tmp", "wb") as out:
    out.write(archive.read(f"samcli/local/rapid/aws-lambda-rie-{sys.argv[2]}"))
os.chmod(sys.argv[3] + ".tmp", 0o755)
os.rename(sys.argv[3] + ".tmp", sys.argv[3])
PY
  rm -rf "$cache/wheel"
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# --pid: whatever is left in the namespaces dies with it, if the timeout strikes.
timeout 60 unshare --mount --net --pid --mount-proc --fork "$0" --inside "$layer" "$rie" "$work" || fail "the layer under the emulator failed (see above)"
echo "lambda_rie: ok (layer $(basename "$layer") under the AWS Lambda RIE from aws-sam-cli $(grep -o 'aws-sam-cli==[0-9.]*' "$requirements" | cut -d= -f3))"

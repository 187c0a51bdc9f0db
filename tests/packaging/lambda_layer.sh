#!/usr/bin/env bash
# Builds the Lambda layer and checks it holds exactly extensions/clef-agent, executable, and
# that the executable inside is the static build and runs.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$root/packaging/lambda/build-layer.sh" "$root/target/static/clef-agent" "$work/layer.zip" >/dev/null
python3 - "$work/layer.zip" "$work" <<'PY'
import os, stat, subprocess, sys, zipfile
layer = zipfile.ZipFile(sys.argv[1])
names = layer.namelist()
assert names == ["extensions/clef-agent"], f"unexpected layer contents: {names}"
mode = layer.getinfo("extensions/clef-agent").external_attr >> 16
assert stat.S_ISREG(mode) and mode & 0o777 == 0o755, f"mode {oct(mode)}"
path = layer.extract("extensions/clef-agent", sys.argv[2])
os.chmod(path, 0o755)
version = subprocess.run([path, "--version"], capture_output=True, text=True, check=True).stdout
assert version.startswith("clef-agent "), version
PY
echo "lambda_layer: ok"

#!/usr/bin/env bash
# Builds the AWS Lambda layer zip: the static executable as extensions/clef-agent (mode 0755),
# which Lambda starts as an external extension.
# Usage: build-layer.sh <static clef-agent> <output zip>
set -euo pipefail
binary=${1:?usage: build-layer.sh <static clef-agent> <output zip>}
output=${2:?usage: build-layer.sh <static clef-agent> <output zip>}
ldd "$binary" 2>&1 | grep -Eq 'statically linked|not a dynamic executable' \
  || { echo "build-layer: $binary is not a static executable (run make static)" >&2; exit 1; }
mkdir -p "$(dirname "$output")"
python3 - "$binary" "$output" <<'PY'
import sys, zipfile
binary, output = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(output, "w", compression=zipfile.ZIP_DEFLATED) as layer:
    info = zipfile.ZipInfo("extensions/clef-agent", date_time=(2026, 1, 1, 0, 0, 0))
    info.external_attr = (0o100755 << 16)
    info.compress_type = zipfile.ZIP_DEFLATED
    with open(binary, "rb") as source:
        layer.writestr(info, source.read())
PY
echo "$output"

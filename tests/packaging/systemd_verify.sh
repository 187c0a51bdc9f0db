#!/usr/bin/env bash
# Checks packaging/systemd/clef-agent.service with `systemd-analyze verify` (offline: no running
# systemd needed). ExecStart must exist, so a copy of the unit points it at the built binary.
# Usage: systemd_verify.sh <clef-agent binary>
set -euo pipefail
binary=$(realpath "${1:?usage: systemd_verify.sh <clef-agent binary>}")
here=$(cd "$(dirname "$0")" && pwd)
unit=$here/../../packaging/systemd/clef-agent.service
fail() { echo "systemd_verify: FAILED: $*" >&2; exit 1; }
if ! command -v systemd-analyze >/dev/null; then
  [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null || fail "systemd-analyze is required (apt-get install systemd)"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq systemd >/dev/null
fi
command -v systemd-analyze >/dev/null || fail "installing systemd did not provide systemd-analyze"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
sed "s|^ExecStart=/usr/local/bin/clef-agent|ExecStart=$binary|" "$unit" > "$work/clef-agent.service"
grep -q "^ExecStart=$binary\$" "$work/clef-agent.service" || fail "the unit's ExecStart line changed: update this script"
output=$(SYSTEMD_LOG_LEVEL=warning systemd-analyze verify --man=no "$work/clef-agent.service" 2>&1) || {
  echo "$output" >&2
  fail "systemd-analyze verify exited non-zero"
}
# Any remark about our unit is a failure; remarks about the host's own units are not ours.
if echo "$output" | grep -F "clef-agent.service" >&2; then
  fail "systemd-analyze verify reported problems with the unit"
fi
for setting in Type=notify WatchdogSec= DynamicUser=yes ProtectSystem=strict NoNewPrivileges=yes PrivateTmp=yes \
  MemoryDenyWriteExecute=yes RestrictAddressFamilies= SystemCallFilter=@system-service 'CapabilityBoundingSet=$' LoadCredential= \
  SystemCallErrorNumber=EPERM LimitNOFILE= CacheDirectory= ProcSubset=pid PrivateUsers=yes; do
  grep -Eq "^$setting" "$unit" || fail "the unit lacks $setting"
done
echo "systemd_verify: ok ($(systemd-analyze --version | head -1))"

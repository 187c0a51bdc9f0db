#!/usr/bin/env bash
# Runs packaging/systemd/clef-agent.service under a real systemd: a minimal Debian root file
# system (mmdebstrap, cached under target/systemd-rootfs/ by its package list) booted with
# systemd-nspawn, the agent installed with the commands README gives, serving the demo artifact.
# Checks: start reaches `active` through Type=notify; the watchdog keeps it alive past twice
# WatchdogSec; `systemctl reload` (SIGHUP) loads a newly published artifact; the token file, the
# Unix socket and the disk cache work inside the sandbox; a restart during a source outage serves
# from the disk cache; `systemctl stop` exits 0; the journal carries the agent's lines and no
# secret; `systemd-analyze security` rates the unit "OK" or better.
# Usage: systemd_boot.sh <static clef-agent>   (root; installs mmdebstrap and systemd-container)
set -euo pipefail
binary=$(realpath "${1:?usage: systemd_boot.sh <static clef-agent>}")
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
fail() { echo "systemd_boot: FAILED: $*" >&2; exit 1; }
step() { echo "systemd_boot: $*"; }
[ "$(id -u)" = 0 ] || fail "booting a container with systemd-nspawn needs root"

for tool in mmdebstrap systemd-nspawn nsenter pgrep; do
  if ! command -v $tool >/dev/null; then
    command -v apt-get >/dev/null || fail "$tool is required: install mmdebstrap, systemd-container, util-linux and procps"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mmdebstrap systemd-container util-linux procps >/dev/null
  fi
  command -v $tool >/dev/null || fail "installing mmdebstrap, systemd-container, util-linux and procps did not provide $tool"
done

# The root file system: systemd as PID 1, kill for ExecReload=, curl for the Unix socket.
# Cached by everything that decides its content; a change of the list builds a new one.
suite=bookworm
mirror=http://deb.debian.org/debian
packages=systemd,systemd-sysv,procps,curl
cache=$root/target/systemd-rootfs
key=$(echo "minbase $suite $mirror $packages" | sha256sum | cut -c1-16)
rootfs=$cache/$key
if [ ! -e "$rootfs/.complete" ]; then
  step "building the root file system ($suite, $packages) into $rootfs"
  started=$SECONDS
  rm -rf "$cache" && mkdir -p "$cache"
  mmdebstrap --quiet --variant=minbase --include="$packages" --mode=root "$suite" "$rootfs.tmp" "$mirror" \
    || fail "mmdebstrap could not build the root file system (is $mirror reachable?)"
  mv "$rootfs.tmp" "$rootfs" && touch "$rootfs/.complete"
  step "root file system built in $((SECONDS - started)) s"
else
  step "reusing the cached root file system $rootfs"
fi

# What goes into the container, read-only at /mnt/clef: the files a user would copy.
work=$(mktemp -d)
nspawn=
cleanup() {
  local status=$?
  if [ $status != 0 ] && [ -s "$work/console.log" ]; then
    echo "--- container console (last 40 lines)" >&2
    tail -n 40 "$work/console.log" >&2
  fi
  if [ -n "$nspawn" ] && kill -0 "$nspawn" 2>/dev/null; then
    # SIGTERM makes systemd-nspawn power the container off cleanly; SIGKILL if that hangs.
    kill "$nspawn" 2>/dev/null
    for _ in $(seq 50); do kill -0 "$nspawn" 2>/dev/null || break; sleep 0.2; done
    kill -9 "$nspawn" 2>/dev/null || true
    wait "$nspawn" 2>/dev/null || true
  fi
  rm -rf "$work"
  exit $status
}
trap cleanup EXIT
trap 'exit 143' INT TERM
stage=$work/stage
mkdir -p "$stage"
cp "$binary" "$stage/clef-agent"
cp "$root/packaging/systemd/clef-agent.service" "$root/demo/demo.agekey" "$stage/"
# agent.env is the shipped example with the demo artifact as its source, plus the Unix socket.
sed 's|^CLEF_AGENT_SOURCE=.*|CLEF_AGENT_SOURCE=/etc/clef-agent/demo.age.json|' \
  "$root/packaging/systemd/agent.env.example" > "$stage/agent.env"
grep -q '^CLEF_AGENT_SOURCE=/etc/clef-agent/demo.age.json$' "$stage/agent.env" || fail "agent.env.example lost CLEF_AGENT_SOURCE"
grep -q '^CLEF_AGENT_TOKEN_FILE=/run/clef-agent/token$' "$stage/agent.env" || fail "agent.env.example lost CLEF_AGENT_TOKEN_FILE"
grep -q '^CLEF_AGENT_CACHE_PATH=/var/cache/private/clef-agent$' "$stage/agent.env" || fail "agent.env.example lost CLEF_AGENT_CACHE_PATH"
echo 'CLEF_AGENT_SOCKET=/run/clef-agent/agent.sock' >> "$stage/agent.env"
cp "$root/demo/demo.age.json" "$stage/demo.age.json"
# A second revision of the same ciphertext, for the reload: newer packedAt, new revision.
python3 - "$root/demo/demo.age.json" "$stage/demo-next.age.json" <<'PY'
import json, sys
artifact = json.load(open(sys.argv[1]))
artifact["packedAt"] = "2026-11-25T12:00:00.000Z"
artifact["revision"] = "1732521600000-demo0002"
json.dump(artifact, open(sys.argv[2], "w"), indent=2)
PY
# The unit's WatchdogSec=30s would make the watchdog check wait a minute: a drop-in shortens it.
printf '[Service]\nWatchdogSec=3s\n' > "$stage/watchdog.conf"
chmod -R a+rX "$stage"

# --volatile=overlay: the cached tree stays as built, every change goes to a tmpfs.
# --private-network: the container's loopback is its own, so port 7779 cannot clash.
step "booting the container"
systemd-nspawn --quiet --directory="$rootfs" --volatile=overlay --boot --private-network \
  --register=no --keep-unit --machine=clef-systemd-test --bind-ro="$stage:/mnt/clef" \
  </dev/null >"$work/console.log" 2>&1 &
nspawn=$!
leader=
for _ in $(seq 100); do
  leader=$(pgrep -P "$nspawn" -x systemd || true)
  [ -n "$leader" ] && break
  kill -0 "$nspawn" 2>/dev/null || fail "systemd-nspawn exited before systemd started"
  sleep 0.1
done
[ -n "$leader" ] || fail "no systemd started inside the container within 10 s"
# Runs a command inside the container, with a clean environment.
inside() {
  nsenter --target "$leader" --all -- env -i PATH=/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    SYSTEMD_PAGER= SYSTEMD_COLORS=0 "$@"
}
# Until systemd has opened its private bus, systemctl cannot connect: poll, then wait for boot.
state=
for _ in $(seq 300); do
  state=$(inside systemctl is-system-running 2>&1 || true)
  case $state in running | degraded) break ;; esac
  sleep 0.2
done
[ "$state" = running ] || { inside systemctl --failed --no-pager >&2 || true; fail "the container's systemd did not reach running within 60 s (it says: $state)"; }
show() { inside systemctl show clef-agent --value -p "$1"; }
journal() { inside journalctl -u clef-agent -o cat --no-pager; }

step "installing the agent as README says"
inside sh -euc '
  install -m 0755 /mnt/clef/clef-agent /usr/local/bin/clef-agent
  install -D -m 0600 /mnt/clef/demo.agekey /etc/clef-agent/age.key
  install -m 0644 /mnt/clef/demo.age.json /etc/clef-agent/
  install -D -m 0600 /mnt/clef/agent.env /etc/clef-agent/agent.env
  install -m 0644 /mnt/clef/clef-agent.service /etc/systemd/system/
  install -D -m 0644 /mnt/clef/watchdog.conf /etc/systemd/system/clef-agent.service.d/watchdog.conf
  systemctl daemon-reload
' || fail "installing the files inside the container failed"

step "systemctl enable --now clef-agent"
# Type=notify: the start returns only once the agent sent READY=1 (or fails after
# TimeoutStartSec=). Enabled, the unit also stays loaded after a stop, so its exit status can
# be read then.
inside systemctl enable --now clef-agent || { journal >&2; fail "systemctl enable --now clef-agent failed"; }
[ "$(show Type)" = notify ] || fail "the unit is not Type=notify"
[ "$(show ActiveState)/$(show SubState)" = active/running ] || { journal >&2; fail "clef-agent is $(show ActiveState)/$(show SubState), not active/running"; }
[ "$(show WatchdogUSec)" = 3s ] || fail "the watchdog drop-in did not apply (WatchdogUSec=$(show WatchdogUSec))"
pid=$(show MainPID)

step "token file, TCP and Unix socket"
token_stat=$(inside stat -c '%a %u' /run/clef-agent/token) || fail "no token file at /run/clef-agent/token"
[ "$token_stat" = "600 $(show UID)" ] || fail "the token file is '$token_stat' (mode uid), expected 600 owned by the service's dynamic user $(show UID)"
token=$(inside cat /run/clef-agent/token)
[ ${#token} -ge 32 ] || fail "the token file holds ${#token} characters"
unauthorized=$(inside curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:7779/v1/secrets)
[ "$unauthorized" = 401 ] || fail "/v1/secrets without the token answered $unauthorized, expected 401"
secrets=$(inside curl -sf -H "Authorization: Bearer $token" http://127.0.0.1:7779/v1/secrets) \
  || fail "/v1/secrets over TCP with the token failed"
[ "$(inside stat -c '%F %a' /run/clef-agent/agent.sock)" = "socket 660" ] || fail "no socket (mode 660) at /run/clef-agent/agent.sock"
over_socket=$(inside curl -sf --unix-socket /run/clef-agent/agent.sock -H "Authorization: Bearer $token" http://localhost/v1/secrets) \
  || fail "/v1/secrets over the Unix socket failed"
[ "$over_socket" = "$secrets" ] || fail "the Unix socket and TCP served different secrets"
python3 -c 'import json,sys; d=json.loads(sys.argv[1]); assert isinstance(d, dict) and d, d' "$secrets" \
  || fail "/v1/secrets did not answer a non-empty JSON object"

step "disk cache"
# DynamicUser=: CacheDirectory= lives in /var/cache/private, reached through /var/cache/clef-agent.
# What it keeps is the artifact as fetched (encrypted), in a file named after the source.
inside sh -c 'cmp -s /etc/clef-agent/demo.age.json /var/cache/private/clef-agent/source-*.age.json' \
  || fail "the disk cache does not hold the artifact ($(inside find /var/cache/private/clef-agent 2>&1 | tr '\n' ' '))"

step "watchdog: alive past twice WatchdogSec"
# The agent must ping WATCHDOG=1 every 1.5 s; without pings systemd kills it after 3 s. Time
# passing is what is tested here, so this one waits instead of polling.
sleep 7
[ "$(show ActiveState)" = active ] && [ "$(show MainPID)" = "$pid" ] && [ "$(show NRestarts)" = 0 ] \
  || { journal >&2; fail "the agent did not survive 7 s with WatchdogSec=3s (MainPID $pid -> $(show MainPID), NRestarts=$(show NRestarts))"; }
if journal | grep -i 'watchdog'; then fail "the journal mentions the watchdog"; fi

step "systemctl reload clef-agent (a new artifact published by rename)"
inside sh -euc '
  install -m 0644 /mnt/clef/demo-next.age.json /etc/clef-agent/.next.age.json
  mv /etc/clef-agent/.next.age.json /etc/clef-agent/demo.age.json
  systemctl reload clef-agent
' || fail "publishing the new artifact or systemctl reload failed"
refreshed=
for _ in $(seq 50); do
  if journal | grep -q 'refreshed: revision 1732521600000-demo0002'; then refreshed=yes; break; fi
  sleep 0.1
done
[ -n "$refreshed" ] || { journal >&2; fail "no 'refreshed: revision 1732521600000-demo0002' in the journal 5 s after systemctl reload"; }
[ "$(show MainPID)" = "$pid" ] || fail "reload restarted the agent"

step "systemd-analyze security"
security=$(inside systemd-analyze security --no-pager clef-agent.service) || { echo "$security" >&2; fail "systemd-analyze security failed"; }
overall=$(echo "$security" | grep -o 'Overall exposure level for clef-agent.service: .*' || true)
[ -n "$overall" ] || { echo "$security" >&2; fail "systemd-analyze security printed no overall exposure level"; }
step "$overall"
echo "$overall" | grep -Eq ': [0-9.]+ (OK|SAFE|PERFECT)' || { echo "$security" >&2; fail "the unit is rated worse than OK"; }

step "systemctl stop clef-agent"
inside systemctl stop clef-agent || fail "systemctl stop clef-agent failed"
stopped="$(show ExecMainCode)/$(show ExecMainStatus)/$(show Result)"
# ExecMainCode=1 is CLD_EXITED: the agent exited by itself, status 0, instead of being killed.
[ "$stopped" = 1/0/success ] || { journal >&2; fail "the agent did not exit 0 on stop (ExecMainCode/ExecMainStatus/Result = $stopped)"; }
inside sh -c 'cmp -s /mnt/clef/demo-next.age.json /var/cache/private/clef-agent/source-*.age.json' \
  || fail "the disk cache did not keep the reloaded artifact across the stop"

step "restart during a source outage: served from the disk cache"
inside mv /etc/clef-agent/demo.age.json /etc/clef-agent/gone.age.json
inside systemctl start clef-agent || { journal >&2; fail "start from the disk cache failed"; }
token=$(inside cat /run/clef-agent/token)
from_cache=$(inside curl -sf -H "Authorization: Bearer $token" http://127.0.0.1:7779/v1/secrets) \
  || { journal >&2; fail "/v1/secrets failed when started from the disk cache"; }
[ "$from_cache" = "$secrets" ] || fail "the disk cache served other secrets"
journal | grep -q 'serving the artifact from the disk cache' || { journal >&2; fail "the journal does not say the disk cache was used"; }
inside systemctl stop clef-agent
[ "$(show ExecMainStatus)" = 0 ] || fail "the second stop did not exit 0"

step "the token shared with an application's user through Group= (README's recipe)"
inside sh -euc '
  groupadd --system clef-agent-token
  useradd --system --no-create-home --groups clef-agent-token app
  mkdir -p /etc/systemd/system/clef-agent.service.d
  printf "[Service]\nGroup=clef-agent-token\n" > /etc/systemd/system/clef-agent.service.d/group.conf
  echo CLEF_AGENT_TOKEN_FILE_MODE=0640 >> /etc/clef-agent/agent.env
  mv /etc/clef-agent/gone.age.json /etc/clef-agent/demo.age.json
  systemctl daemon-reload
' || fail "setting up the token group failed"
inside systemctl start clef-agent || { journal >&2; fail "start with Group=clef-agent-token failed"; }
token_stat=$(inside stat -c '%a %G' /run/clef-agent/token)
[ "$token_stat" = "640 clef-agent-token" ] || fail "the shared token file is '$token_stat', expected 640 clef-agent-token"
shared=$(inside runuser -u app -- sh -c 'curl -sf --unix-socket /run/clef-agent/agent.sock \
  -H "Authorization: Bearer $(cat /run/clef-agent/token)" http://localhost/v1/secrets') \
  || fail "the application's user could not read the token file or use the socket"
[ "$shared" = "$secrets" ] || fail "the application's user got other secrets"
if inside runuser -u nobody -- cat /run/clef-agent/token >/dev/null 2>&1; then fail "a user outside the group read the token"; fi
token=$(inside cat /run/clef-agent/token)
inside systemctl stop clef-agent
[ "$(show ExecMainStatus)" = 0 ] || fail "the third stop did not exit 0"

step "journal"
log=$(journal)
for line in 'lifecycle: daemon' 'Agent ready. Polling for updates.' 'Agent server listening at' \
  'refreshed: revision 1732521600000-demo0002' 'Shutdown complete.'; do
  echo "$log" | grep -qF "$line" || { echo "$log" >&2; fail "the journal lacks '$line'"; }
done
if echo "$log" | grep -qF "$token"; then fail "the journal holds the token"; fi
for value in $(python3 -c '
import json, sys
def walk(v):
    if isinstance(v, dict):
        for x in v.values(): yield from walk(x)
    else: yield str(v)
print("\n".join(x for x in walk(json.loads(sys.argv[1])) if len(x) >= 6))' "$secrets"); do
  if echo "$log" | grep -qF -- "$value"; then fail "the journal holds a secret value"; fi
done

step "ok ($(inside systemctl --version | head -1); $overall)"

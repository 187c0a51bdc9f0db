#!/usr/bin/env bash
# Runs packaging/systemd/clef-agent.service under a real systemd: a minimal Debian root file
# system (mmdebstrap, cached under target/systemd-rootfs/ by its package list) booted with
# systemd-nspawn, the agent installed with the commands README gives, serving the demo artifact.
# Checks: start reaches `active` through Type=notify; the watchdog keeps it alive past twice
# WatchdogSec; `systemctl reload` (SIGHUP) loads a newly published artifact; the token file, the
# Unix socket and the disk cache work inside the sandbox; a restart during a source outage serves
# from the disk cache; `systemctl stop` exits 0; the journal carries the agent's lines and no
# secret; `systemd-analyze security` rates the unit "OK" or better. Delivery beyond HTTP under the
# same sandbox: packaging/systemd/credentials/ installed, app.service's main process receives the
# credential from the agent's socket and a unit not allowed gets none (its start fails); the
# render directory in RuntimeDirectory= (tmpfs, modes, the swap on reload, emptied by the agent at
# stop, shared through Group=); the change hook's environment.
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
# Delivery beyond HTTP. The credentials example as README says to adapt it: the id is a name of
# /v1/keys (the demo has no flat db_password). A second unit, not in CLEF_AGENT_CREDENTIAL_UNITS,
# asks for the same id. The files go to a directory in the unit's RuntimeDirectory= (tmpfs).
cp "$root/packaging/systemd/credentials/clef-agent.service.d/credentials.conf" "$stage/"
sed 's/db_password/database__DB_PASSWORD/g' "$root/packaging/systemd/credentials/app.service" > "$stage/app.service"
grep -q '^LoadCredential=database__DB_PASSWORD:/run/clef-agent/credentials.sock$' "$stage/app.service" \
  || fail "packaging/systemd/credentials/app.service lost its LoadCredential= line"
sed 's/^Description=.*/Description=A unit not allowed to load credentials/' "$stage/app.service" > "$stage/intruder.service"
# What app.service received, seen by its main process (with DynamicUser=, systemd 252 denies
# ExecStartPost= access to $CREDENTIALS_DIRECTORY): length and hash into the journal, never the
# value. The example's ExecStartPre= (no empty credential) stays.
cat > "$stage/app-check.conf" <<'UNIT'
[Service]
ExecStart=
ExecStart=/bin/sh -c 'f="$$CREDENTIALS_DIRECTORY/database__DB_PASSWORD"; echo "app: credential $$(wc -c < "$$f") bytes, sha256 $$(sha256sum < "$$f" | cut -d" " -f1)"; exec sleep infinity'
UNIT
# What the render directory holds once the agent has exited, before systemd removes its
# RuntimeDirectory= ('+': outside the sandbox, as root), so that the removal seen is the agent's.
cat > "$stage/render-check.conf" <<'UNIT'
[Service]
ExecStopPost=+/bin/sh -c 'cd /run/clef-agent/secrets && echo "render directory after exit: [$$(ls -A | tr "\\n" " ")]"'
UNIT
{
  echo 'CLEF_AGENT_RENDER_DIR=/run/clef-agent/secrets'
  # A hook that shows what it gets: env prints its whole environment into the journal.
  echo 'CLEF_AGENT_ON_CHANGE=/usr/bin/env'
} >> "$stage/agent.env"
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
  install -m 0644 /mnt/clef/credentials.conf /etc/systemd/system/clef-agent.service.d/
  install -m 0644 /mnt/clef/render-check.conf /etc/systemd/system/clef-agent.service.d/
  install -m 0644 /mnt/clef/app.service /mnt/clef/intruder.service /etc/systemd/system/
  install -D -m 0644 /mnt/clef/app-check.conf /etc/systemd/system/app.service.d/check.conf
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

step "credential socket: LoadCredential= from app.service"
uid=$(show UID)
[ "$(inside stat -c '%F %a %u' /run/clef-agent/credentials.sock)" = "socket 600 $uid" ] \
  || fail "no socket (mode 600, the service's user) at /run/clef-agent/credentials.sock"
# systemd (PID 1, root outside the agent's PrivateUsers= namespace) connects from
# \0<random>/unit/app.service/database__DB_PASSWORD; the agent answers only app.service.
inside systemctl start app.service || { journal >&2; fail "systemctl start app.service failed"; }
expected=$(python3 -c '
import hashlib, json, sys
value = json.loads(sys.argv[1])["database"]["DB_PASSWORD"].encode()
print(f"app: credential {len(value)} bytes, sha256 {hashlib.sha256(value).hexdigest()}")' "$secrets")
received=
for _ in $(seq 50); do
  received=$(inside journalctl -u app.service -o cat --no-pager | grep '^app: credential' || true)
  [ -n "$received" ] && break
  sleep 0.1
done
[ "$received" = "$expected" ] || fail "app.service read '$received' from \$CREDENTIALS_DIRECTORY, expected '$expected'"
journal | grep -qxF '[clef-agent] credential: gave database__DB_PASSWORD to app.service' \
  || { journal >&2; fail "the journal does not say the credential went to app.service"; }
# A unit not in CLEF_AGENT_CREDENTIAL_UNITS: the agent closes with nothing written, systemd 252
# makes that an empty credential (not an error), and the example's ExecStartPre= fails the start.
if inside systemctl start intruder.service 2>/dev/null; then fail "intruder.service started without its credential"; fi
[ "$(inside systemctl show intruder.service --value -p ExecMainStartTimestampMonotonic)" = 0 ] \
  || fail "intruder.service's main process ran"
journal | grep -qxF '[clef-agent] credential: refused database__DB_PASSWORD to intruder.service: the unit is not in CLEF_AGENT_CREDENTIAL_UNITS' \
  || { journal >&2; fail "the journal does not name intruder.service and the id it was refused"; }
inside systemctl stop app.service

step "render directory in the RuntimeDirectory= (tmpfs)"
render=/run/clef-agent/secrets
[ "$(inside stat -f -c %T $render)" = tmpfs ] || fail "$render is on $(inside stat -f -c %T $render), not tmpfs"
[ "$(inside stat -c '%a %u' $render)" = "700 $uid" ] || fail "$render is '$(inside stat -c '%a %u' $render)', expected 700 $uid"
names=$(python3 -c '
import json, sys
d = json.loads(sys.argv[1])
print(" ".join(sorted([f"{n}__{k}" for n, v in d.items() for k in v] + ["secrets.env", "secrets.json"])))' "$secrets")
[ "$(inside sh -c "cd $render && ls | sort | tr '\n' ' '")" = "$names " ] || fail "$render holds '$(inside ls $render | tr '\n' ' ')', expected '$names'"
for name in $names; do
  [ "$(inside stat -L -c '%a %u' $render/$name)" = "400 $uid" ] || fail "$render/$name is '$(inside stat -L -c '%a %u' $render/$name)', expected 400 $uid"
done
[ "$(inside cat $render/secrets.json)" = "$secrets" ] || fail "$render/secrets.json is not the /v1/secrets body"
[ "$(inside sh -c "sha256sum < $render/database__DB_PASSWORD" | cut -d' ' -f1)" = "${expected##* }" ] \
  || fail "$render/database__DB_PASSWORD does not hold the value"
revision_dir=$(inside readlink $render/..data)

step "change hook"
hooked=
for _ in $(seq 50); do
  if journal | grep -qxF '[clef-agent] on-change: /usr/bin/env (event refreshed, revision 1732435200000-demo0001) exited with status 0'; then hooked=yes; break; fi
  sleep 0.1
done
[ -n "$hooked" ] || { journal >&2; fail "the hook did not run for the first revision"; }
# env printed the hook's whole environment: these three and nothing else.
hook_env=$(journal | grep -E '^[A-Z_]+=' | sort | tr '\n' ' ')
[ "$hook_env" = "CLEF_EVENT=refreshed CLEF_REVISION=1732435200000-demo0001 PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin " ] \
  || fail "the hook's environment is '$hook_env'"

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
# The render directory switched to a new revision directory, the old one goes after 2 s.
journal | grep -qxF "[clef-agent] render: revision 1732521600000-demo0002 in $render" || fail "the journal does not say the new revision was rendered"
[ "$(inside readlink $render/..data)" != "$revision_dir" ] || fail "$render/..data still points to $revision_dir after the reload"
for _ in $(seq 50); do inside test -e "$render/$revision_dir" || break; sleep 0.1; done
if inside test -e "$render/$revision_dir"; then fail "the replaced $render/$revision_dir is still there 5 s after the reload"; fi
[ "$(inside cat $render/secrets.json)" = "$secrets" ] || fail "$render/secrets.json changed its content after the reload"
hooked=
for _ in $(seq 50); do
  if journal | grep -qxF 'CLEF_REVISION=1732521600000-demo0002'; then hooked=yes; break; fi
  sleep 0.1
done
[ -n "$hooked" ] || { journal >&2; fail "the hook did not run for the reloaded revision"; }

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
# render-check.conf's ExecStopPost= looked into the render directory after the agent had exited,
# before systemd removed the RuntimeDirectory=: empty, the agent removed the files itself.
journal | grep -qxF 'render directory after exit: []' || { journal >&2; fail "the agent left files in $render when it stopped"; }

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
  printf "CLEF_AGENT_RENDER_MODE=0440\nCLEF_AGENT_RENDER_GROUP=clef-agent-token\n" >> /etc/clef-agent/agent.env
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
# The render directory and files given to the same group (PrivateUsers=yes maps Group=).
[ "$(inside stat -c '%a %G' $render)" = "750 clef-agent-token" ] || fail "$render is '$(inside stat -c '%a %G' $render)', expected 750 clef-agent-token"
[ "$(inside stat -L -c '%a %G' $render/secrets.json)" = "440 clef-agent-token" ] || fail "$render/secrets.json is '$(inside stat -L -c '%a %G' $render/secrets.json)', expected 440 clef-agent-token"
[ "$(inside runuser -u app -- cat $render/secrets.json)" = "$secrets" ] || fail "the application's user could not read $render/secrets.json"
if inside runuser -u nobody -- cat $render/secrets.json >/dev/null 2>&1; then fail "a user outside the group read $render/secrets.json"; fi
token=$(inside cat /run/clef-agent/token)
inside systemctl stop clef-agent
[ "$(show ExecMainStatus)" = 0 ] || fail "the third stop did not exit 0"

step "journal"
log=$(journal; inside journalctl -u app.service -u intruder.service -o cat --no-pager)
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

#!/usr/bin/env bash
# The Kubernetes sidecar manifests. Schema: both files, strictly (unknown fields are errors),
# against the Kubernetes API of the oldest and newest versions they are for. Pod: podman 4.3
# cannot play native sidecars (it refuses probes on init containers and runs init containers to
# completion), so the test checks that sidecar.yaml runs the very agent container, pod security
# context and volumes of sidecar-containers.yaml, and plays that one with `podman kube play`
# (kube_variant.py lists what it replaces). The agent reads the manifest's S3 source from
# moto_server with IRSA credentials (AssumeRoleWithWebIdentity, then a GetObject that moto checks
# against the role's policy), and busybox as the application waits for the token file in the
# shared volume and reads a secret from 127.0.0.1:7779. Also checked: the probes' command passes
# in the agent's container; both run as 65532, the agent with no capability, no new privileges
# and a read-only root; the memory limit; the token file's owner and mode; SIGTERM from stopping
# the pod ends the agent with exit 0 within 3 s.
# Usage: kubernetes_sidecar.sh (after `make static` and `make deps`)
set -euo pipefail
name=kubernetes_sidecar
work=$(mktemp -d)
id=clef-test-$$
agent_image=localhost/clef-agent:$id
busybox_image=localhost/clef-busybox:$id
moto=
cleanup() {
  [ -n "$moto" ] && kill "$moto" 2>/dev/null
  if [ -f "$work/play.yaml" ]; then
    command podman --runtime runc kube down "$work/play.yaml" >/dev/null 2>&1
  fi
  command podman --runtime runc pod rm -f "api-gateway-$id-pod-0" >/dev/null 2>&1
  command podman --runtime runc volume rm -f "clef-token-$id" >/dev/null 2>&1
  command podman --runtime runc rmi -f "$agent_image" "$busybox_image" >/dev/null 2>&1
  rm -rf "$work"
}
trap cleanup EXIT
# shellcheck source=tests/packaging/podman_common.sh
. "$(dirname "$0")/podman_common.sh"
manifests=$repo/packaging/kubernetes
python=$repo/.venv/bin/python
validate=$repo/.venv/bin/kubernetes-validate
[ -x "$validate" ] || fail "$validate is missing: run make packaging-deps"
[ -x "$repo/.venv/bin/moto_server" ] || fail "$repo/.venv/bin/moto_server is missing: run make deps"
[ -x "$repo/target/static/clef-agent" ] || fail "$repo/target/static/clef-agent is missing: run make static"

# Native sidecars: from 1.29 on by default (stable in 1.33); the plain example for older too.
for version in 1.29.0 1.37.0; do
  "$validate" --strict --quiet -k "$version" "$manifests/sidecar.yaml" || fail "sidecar.yaml is not a valid Kubernetes $version manifest"
done
for version in 1.25.0 1.37.0; do
  "$validate" --strict --quiet -k "$version" "$manifests/sidecar-containers.yaml" || fail "sidecar-containers.yaml is not a valid Kubernetes $version manifest"
done
"$python" "$repo/tests/packaging/kube_variant.py" check "$manifests/sidecar.yaml" "$manifests/sidecar-containers.yaml" \
  || fail "sidecar.yaml and sidecar-containers.yaml do not run the same agent"

build_agent_image "$agent_image"
build_busybox_image "$busybox_image"

# S3 and STS: moto_server, holding the demo artifact where the manifest's source points, and
# the manifest's IRSA role allowed to get that object only. The pod reaches the host as
# host.containers.internal, the gateway of podman's kube network, which exists only while a pod
# runs: moto listens on every address for the test's few seconds. S3_IGNORE_SUBDOMAIN_BUCKETNAME:
# else moto takes the host name's first label ("host") for a virtual-hosted bucket's name.
{ read -r bucket; read -r key; read -r role; } < <("$python" "$repo/tests/packaging/kube_variant.py" source "$manifests/sidecar.yaml") \
  || fail "cannot read the S3 source and IRSA role of sidecar.yaml"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("0.0.0.0",0)); print(s.getsockname()[1])')
env -i PATH="$PATH" S3_IGNORE_SUBDOMAIN_BUCKETNAME=true "$repo/.venv/bin/moto_server" -H 0.0.0.0 -p "$port" > "$work/moto.log" 2>&1 &
moto=$!
python3 - "$port" <<'PY' || { cat "$work/moto.log" >&2; fail "moto_server did not answer on port $port"; }
import sys, time, urllib.request
deadline = time.time() + 30
while True:
    try:
        urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/moto-api/", timeout=2).read()
        break
    except OSError:
        if time.time() > deadline:
            raise
        time.sleep(0.1)
PY
policy='{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":["s3:GetObject"],"Resource":"arn:aws:s3:::'$bucket/$key'"}]}'
# Dummy credentials until enforce-auth; from then on moto checks signatures and policies, after
# one free action: the agent's AssumeRoleWithWebIdentity, which AWS does not sign either.
role_arn=$(env -i PATH="$PATH" AWS_CONFIG_FILE=/dev/null AWS_SHARED_CREDENTIALS_FILE=/dev/null AWS_EC2_METADATA_DISABLED=true \
    AWS_ACCESS_KEY_ID=admin AWS_SECRET_ACCESS_KEY=admin \
    "$python" "$repo/tests/aws/moto_admin.py" --endpoint "http://127.0.0.1:$port" \
    create-bucket "$bucket" + put-object "$bucket" "$key" "$repo/demo/demo.age.json" + create-role "$role" "$policy" + enforce-auth 1 \
  | grep '^arn:aws:iam::') || fail "moto_admin.py could not set up the bucket and the role"

# The key as the kubelet mounts the Secret (root, group fsGroup, 0440); the service account
# token EKS projects for IRSA (a JWT's shape; moto does not check it).
mkdir -p "$work/key" "$work/aws-token"
install -m 0440 -o root -g 65532 "$repo/demo/demo.agekey" "$work/key/age.key"
printf '%s\n' 'eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJzeXN0ZW06c2VydmljZWFjY291bnQ6ZGVmYXVsdDphcGktZ2F0ZXdheSJ9.c2lnbmF0dXJl' > "$work/aws-token/token"
chmod 0644 "$work/aws-token/token"
chmod 0755 "$work" "$work/key" "$work/aws-token"
"$python" "$repo/tests/packaging/kube_variant.py" variant "$manifests/sidecar-containers.yaml" "-$id" \
  "$agent_image" "$busybox_image" "$work/key" "$work/aws-token" "http://host.containers.internal:$port" "$role_arn" \
  "$repo/tests/packaging/kube_app.sh" > "$work/play.yaml" || fail "kube_variant.py variant failed"
"$validate" --strict --quiet "$work/play.yaml" || fail "the podman variant is not a valid Kubernetes manifest"

# podman logs that it cannot manage the probes' systemd timers (no systemd here): its stderr
# is shown on failure only.
podman kube play "$work/play.yaml" >/dev/null 2>"$work/play.err" || { cat "$work/play.err" >&2; fail "podman kube play failed"; }
pod=api-gateway-$id-pod-0
agent=$pod-clef-agent
app=$pod-app

printed=
for _ in $(seq 300); do
  printed=$(podman logs "$app" 2>&1 | grep '^app: ' || true)
  [ -n "$printed" ] && break
  sleep 0.1
done
[ "$printed" = "app: DB_PASSWORD has 24 characters" ] \
  || { podman logs "$agent" >&2; fail "the application printed '${printed:-nothing}', not the length of the demo DB_PASSWORD (24)"; }
# From the pod (not 127.0.0.1): STS, then the object, both answered 200 by moto.
requests=$(sed -E -n 's/^([0-9.]+) - - \[[^]]*\] "(POST|GET) ([^ ]*) HTTP[^"]*" ([0-9]+).*/\1 \2 \3 \4/p' "$work/moto.log" | grep -v '^127\.0\.0\.1 ' || true)
[ "$(awk '{print $2, $3, $4}' <<<"$requests")" = "POST / 200
GET /$bucket/$key 200" ] || fail "expected STS AssumeRoleWithWebIdentity and S3 GetObject from the pod, moto logged: $requests"

# podman turns exec probes into `CMD-SHELL … || exit 1` health checks, which need a shell the
# scratch image has not got (and no systemd timer runs them here): run each probe's command
# from the manifest in the agent's container instead.
"$python" - "$work/play.yaml" > "$work/probes" <<'PY'
import shlex, sys, yaml
for doc in yaml.safe_load_all(open(sys.argv[1])):
    if doc["kind"] == "Deployment":
        for c in doc["spec"]["template"]["spec"]["containers"]:
            if c["name"] == "clef-agent":
                for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
                    print(probe, shlex.join(c[probe]["exec"]["command"]))
PY
[ "$(wc -l < "$work/probes")" = 3 ] || fail "expected the agent's startup, liveness and readiness probes"
while read -r probe command; do
  # shellcheck disable=SC2086 # the probe's command, split as the kubelet runs it
  podman exec "$agent" $command || fail "the $probe's command ($command) failed in the agent's container"
done < "$work/probes"

check_confined "$agent" 65532
app_uid=$(grep '^Uid:' "/proc/$(podman inspect --format '{{.State.Pid}}' "$app")/status" | awk '{print $2}')
[ "$app_uid" = 65532 ] || fail "the application runs as $app_uid, not as the pod's runAsUser 65532"
memory=$(podman inspect --format '{{.HostConfig.Memory}}' "$agent")
[ "$memory" = $((64 * 1024 * 1024)) ] || fail "the agent's memory limit is $memory, not the manifest's 64Mi"
agent_proc=/proc/$(podman inspect --format '{{.State.Pid}}' "$agent")
token_file=$(stat -c '%u:%g %a' "$agent_proc/root/run/clef/token") || fail "no token file in the agent's /run/clef"
[ "$token_file" = "65532:65532 600" ] || fail "the token file is $token_file, not 65532:65532 600"
# What podman 4.3 makes of `emptyDir: { medium: Memory }` (the kubelet mounts a tmpfs).
token_fs=$(awk '$5 == "/run/clef" { for (i = 7; $i != "-"; i++); print $(i + 1) }' "$agent_proc/mountinfo")

start=$(date +%s%N)
podman pod stop -t 3 "$pod" >/dev/null 2>"$work/stop.err" || { cat "$work/stop.err" >&2; fail "podman pod stop failed"; }
elapsed_ms=$((($(date +%s%N) - start) / 1000000))
code=$(podman inspect --format '{{.State.ExitCode}}' "$agent")
[ "$code" = 0 ] || { podman logs "$agent" >&2; fail "the agent's exit code is $code after SIGTERM"; }
[ "$elapsed_ms" -lt 3000 ] || fail "podman pod stop took $elapsed_ms ms (SIGKILL after 3 s)"
podman logs "$agent" 2>&1 | grep -q 'Shutdown complete.' || fail "no 'Shutdown complete.' line in the agent's logs"

echo "$name: ok (schemas 1.25-1.37; podman kube play: IRSA and S3 from moto, the application read a 24-character secret; token volume: $token_fs under podman; pod stopped in $elapsed_ms ms)"

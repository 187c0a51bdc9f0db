#!/usr/bin/env bash
# The Kubernetes sidecar manifests. Schema: both files, strictly (unknown fields are errors),
# against the Kubernetes API of the oldest and newest versions they are for. Pod: podman 4.3
# cannot play native sidecars (it refuses probes on init containers and runs init containers to
# completion), so the test checks that sidecar.yaml runs the very agent container, pod security
# context and volumes of sidecar-containers.yaml, and plays that one with `podman kube play`
# (kube_variant.py lists what it replaces). Checks: busybox as the application waits for the
# token file in the shared volume and reads a secret from 127.0.0.1:7779; the probes' command
# passes in the agent's container; both run as 65532, the agent with no capability, no new
# privileges and a read-only root; the memory limit; the token file's owner and mode; SIGTERM
# from stopping the pod ends the agent with exit 0. Usage: kubernetes_sidecar.sh (after `make static`)
set -euo pipefail
name=kubernetes_sidecar
work=$(mktemp -d)
id=clef-test-$$
agent_image=localhost/clef-agent:$id
busybox_image=localhost/clef-busybox:$id
cleanup() {
  if [ -f "$work/play.yaml" ]; then
    command podman --runtime runc kube down "$work/play.yaml" >/dev/null 2>&1
  fi
  command podman --runtime runc pod rm -f "api-gateway-$id-pod-0" >/dev/null 2>&1
  command podman --runtime runc volume rm -f "clef-token-$id" >/dev/null 2>&1
  command podman --runtime runc rmi -f "$agent_image" "$busybox_image" >/dev/null 2>&1
  rm -rf "$work"
}
trap cleanup EXIT
. "$(dirname "$0")/podman_common.sh"
manifests=$repo/packaging/kubernetes
python=$repo/.venv/bin/python
validate=$repo/.venv/bin/kubernetes-validate
[ -x "$validate" ] || fail "$validate is missing: run make packaging-deps"
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

# The demo artifact, and the key as the kubelet mounts the Secret (root, group fsGroup, 0440).
mkdir -p "$work/artifact" "$work/key"
install -m 0644 "$repo/demo/demo.age.json" "$work/artifact/demo.age.json"
install -m 0440 -o root -g 65532 "$repo/demo/demo.agekey" "$work/key/age.key"
chmod 0755 "$work" "$work/artifact" "$work/key"
"$python" "$repo/tests/packaging/kube_variant.py" variant "$manifests/sidecar-containers.yaml" "-$id" \
  "$agent_image" "$busybox_image" "$work/artifact" "$work/key" "$repo/tests/packaging/kube_app.sh" > "$work/play.yaml" \
  || fail "kube_variant.py variant failed"
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

echo "$name: ok (schemas 1.25-1.37; podman kube play: the application read a 24-character secret; token volume: $token_fs under podman; pod stopped in $elapsed_ms ms)"

#!/usr/bin/env bash
# The scratch image under a real container engine (root podman with runc): built from
# packaging/docker/Dockerfile on target/static/clef-agent as `make image` does, run read-only as
# 65532 with every capability dropped and no new privileges, serving the demo artifact. Checks
# the image holds the executable only, `clef-agent healthcheck` passes inside the container, a
# second container of the pod (busybox, no curl) gets the secrets over 127.0.0.1 while the pod's
# own address does not answer, and `podman stop` (SIGTERM) ends it with exit 0 within 3 s.
# Usage: container_image.sh   (after `make static`)
set -euo pipefail
name=container_image
work=$(mktemp -d)
id=clef-test-$$
agent_image=localhost/clef-agent:$id
busybox_image=localhost/clef-busybox:$id
pod=$id
mounted=
cleanup() {
  [ -n "$mounted" ] && command podman --runtime runc image unmount "$agent_image" >/dev/null 2>&1
  command podman --runtime runc pod rm -f "$pod" >/dev/null 2>&1
  command podman --runtime runc rm -f "$id-outsider" >/dev/null 2>&1
  command podman --runtime runc rmi -f "$agent_image" "$busybox_image" >/dev/null 2>&1
  rm -rf "$work"
}
trap cleanup EXIT
# shellcheck source=tests/packaging/podman_common.sh
. "$(dirname "$0")/podman_common.sh"
binary=$repo/target/static/clef-agent
[ -x "$binary" ] || fail "$binary is missing: run make static"

build_agent_image "$agent_image"
build_busybox_image "$busybox_image"

# What the image holds: the executable, byte for byte, owned by root and not writable by 65532.
root=$(podman image mount "$agent_image") || fail "podman image mount failed"
mounted=yes
files=$(cd "$root" && find . -mindepth 1 -printf '%p %u:%g %m\n')
[ "$files" = "./clef-agent root:root 755" ] || fail "the image should hold /clef-agent (root, 0755) only, not: $files"
cmp -s "$root/clef-agent" "$binary" || fail "/clef-agent in the image is not $binary"
podman image unmount "$agent_image" >/dev/null
mounted=
size=$(podman image inspect --format '{{.Size}}' "$agent_image")
binary_size=$(stat -c %s "$binary")
# A layer's tar headers and the image config add a few KiB; anything more is something else.
[ "$size" -le $((binary_size + 65536)) ] || fail "the image is $size bytes, the executable $binary_size"
config=$(podman image inspect --format '{{.Config.User}} {{.Config.Entrypoint}} {{.Config.ExposedPorts}} {{.Config.Healthcheck.Test}}' "$agent_image")
[ "$config" = "65532:65532 [/clef-agent] map[7779/tcp:{}] [CMD /clef-agent healthcheck]" ] \
  || fail "unexpected image config: $config"

# The demo artifact and its (public, demo-only) key, readable by the container's user.
install -m 0644 "$repo/demo/demo.age.json" "$work/demo.age.json"
install -m 0644 "$repo/demo/demo.agekey" "$work/demo.agekey"
token=container-test-token

# podman run and stop log that they cannot manage the HEALTHCHECK's systemd timer (there is no
# systemd here; `podman healthcheck run` below runs it): their stderr is shown on failure only.
podman pod create --name "$pod" >/dev/null || fail "podman pod create failed"
podman run -d --pod "$pod" --name "$id-agent" \
  --read-only --user 65532:65532 --cap-drop=all --security-opt no-new-privileges \
  -v "$work/demo.age.json:/etc/clef/demo.age.json:ro" -v "$work/demo.agekey:/etc/clef/demo.agekey:ro" \
  -e CLEF_AGENT_SOURCE=/etc/clef/demo.age.json -e CLEF_AGENT_AGE_KEY_FILE=/etc/clef/demo.agekey \
  -e CLEF_AGENT_TOKEN="$token" \
  "$agent_image" >/dev/null 2>"$work/run.err" || { cat "$work/run.err" >&2; fail "podman run of the agent failed"; }

ready=
for _ in $(seq 100); do
  if podman exec "$id-agent" /clef-agent healthcheck >/dev/null 2>&1; then ready=yes; break; fi
  [ "$(podman inspect --format '{{.State.Running}}' "$id-agent")" = true ] || break
  sleep 0.1
done
[ -n "$ready" ] || { podman logs "$id-agent" >&2; fail "podman exec $id-agent /clef-agent healthcheck never exited 0"; }
podman healthcheck run "$id-agent" >/dev/null || fail "the image's HEALTHCHECK did not pass"

check_confined "$id-agent" 65532

# The application's side: another container of the pod, with busybox wget instead of curl.
secrets=$(podman run --rm --pod "$pod" --read-only --user 65534:65534 --cap-drop=all "$busybox_image" \
  wget -q -O - --header "Authorization: Bearer $token" http://127.0.0.1:7779/v1/secrets) \
  || fail "busybox wget in the pod did not get /v1/secrets"
grep -q '"DB_PASSWORD":"demo-password-not-secret"' <<<"$secrets" || fail "unexpected /v1/secrets answer"
# The agent listens on loopback: the pod's own address, from outside the pod, does not answer.
address=$(podman inspect --format '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}' "$(podman pod inspect --format '{{.InfraContainerID}}' "$pod")")
[ -n "$address" ] || fail "the pod has no address on podman's network"
outside=$(podman run --rm --name "$id-outsider" "$busybox_image" nc -w 2 "$address" 7779 </dev/null 2>&1) \
  && fail "port 7779 answered on the pod's address $address: $outside"
grep -q 'Connection refused' <<<"$outside" || fail "expected 'Connection refused' from $address:7779, got: $outside"

# SIGTERM (podman stop, 3 s before SIGKILL) ends the agent with exit 0 well within that.
start=$(date +%s%N)
podman stop -t 3 "$id-agent" >/dev/null 2>"$work/stop.err" || { cat "$work/stop.err" >&2; fail "podman stop failed"; }
elapsed_ms=$((($(date +%s%N) - start) / 1000000))
code=$(podman inspect --format '{{.State.ExitCode}}' "$id-agent")
[ "$code" = 0 ] || { podman logs "$id-agent" >&2; fail "exit code $code after podman stop"; }
[ "$elapsed_ms" -lt 3000 ] || fail "podman stop took $elapsed_ms ms (SIGKILL after 3 s)"
podman logs "$id-agent" 2>&1 | grep -q 'Shutdown complete.' || fail "no 'Shutdown complete.' line in the logs"

echo "$name: ok (image $size bytes with a $binary_size-byte executable; served the pod over 127.0.0.1; stopped with exit 0 in $elapsed_ms ms)"

# Sourced by the podman tests (container_image.sh, kubernetes_sidecar.sh). Defines `fail`,
# `podman` (root podman with runc and explicit rlimits, through a containers.conf of our own),
# `build_agent_image TAG` and `build_busybox_image TAG`. Expects `name` (the test's name) and
# `work` (its temporary directory) to be set.
# shellcheck shell=bash disable=SC2154 # name and work are the sourcing test's
fail() { echo "$name: FAILED: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || fail "the podman tests run podman as root"
command -v podman >/dev/null || fail "podman is required: make podman-deps (apt-get install podman runc busybox-static)"
command -v runc >/dev/null || fail "runc is required: make podman-deps (apt-get install runc)"
if [ ! -x /bin/busybox ] || ! { ldd /bin/busybox 2>&1 || true; } | grep -Eq 'statically linked|not a dynamic executable'; then
  fail "a static /bin/busybox is required: make podman-deps (apt-get install busybox-static)"
fi

# runc: crun 1.8 fails on this kernel's hybrid cgroups. The rlimits: podman's defaults raise
# RLIMIT_NOFILE and RLIMIT_NPROC above what these machines allow, so runc cannot start anything.
cat > "$work/containers.conf" <<'CONF'
[containers]
default_ulimits = ["nofile=4096:4096", "nproc=4096:4096"]
[engine]
runtime = "runc"
CONF
export CONTAINERS_CONF=$work/containers.conf
podman() { command podman --runtime runc "$@"; }

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)

# The agent's image, as `make image` builds it: the Dockerfile's final stage on the executable
# `make static` built, in docker format so the HEALTHCHECK is kept.
build_agent_image() {
  podman build -q --format docker -f "$repo/packaging/docker/Dockerfile" --build-arg BINARY=prebuilt \
    -t "$1" "$repo" >/dev/null || fail "podman build of packaging/docker/Dockerfile failed"
}

# The stand-in application: Debian's static busybox alone in a scratch image (nothing can be
# pulled here), with wget and nc but no curl.
build_busybox_image() {
  mkdir -p "$work/busybox"
  cp /bin/busybox "$work/busybox/busybox"
  printf 'FROM scratch\nCOPY busybox /bin/busybox\nENTRYPOINT ["/bin/busybox"]\n' > "$work/busybox/Containerfile"
  podman build -q -t "$1" "$work/busybox" >/dev/null || fail "podman build of the busybox image failed"
}

# The running container's process, seen from the host: its user and group, no capability in
# any set, no_new_privs, a read-only root file system. Usage: check_confined CONTAINER UID
check_confined() {
  local pid status line
  pid=$(podman inspect --format '{{.State.Pid}}' "$1")
  status=$(grep -E '^(Uid|Gid|CapInh|CapPrm|CapEff|CapBnd|CapAmb|NoNewPrivs):' "/proc/$pid/status" | tr -s '\t ' ' ')
  for line in "Uid: $2 $2 $2 $2" "Gid: $2 $2 $2 $2" "CapPrm: 0000000000000000" "CapEff: 0000000000000000" \
      "CapBnd: 0000000000000000" "CapAmb: 0000000000000000" "NoNewPrivs: 1"; do
    grep -qx "$line" <<<"$status" || fail "$1's /proc/$pid/status lacks '$line': $status"
  done
  awk '$5 == "/" { print $6 }' "/proc/$pid/mountinfo" | grep -q '^ro' || fail "$1's root file system is not read-only"
}

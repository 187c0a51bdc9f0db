"""The podman variant of packaging/kubernetes/*.yaml, for kubernetes_sidecar.sh.

`check` compares the two manifests: the native sidecar (sidecar.yaml) must run the very agent
container that the plain `containers:` example (sidecar-containers.yaml) runs, with the same pod
settings, so that the pod podman plays stands for both.

`variant` prints the plain example with only what podman 4.3 or this machine cannot have
replaced: the demo artifact in a file instead of S3 (no AWS here), a hostPath directory instead
of the age-key Secret (podman writes a Secret volume's data base64-encoded), locally built
images, one replica, names made unique for the test, and busybox as the application.
"""
import copy
import sys

import yaml


def load(path):
    return list(yaml.safe_load_all(open(path)))


def deployment(docs):
    return next(d for d in docs if d["kind"] == "Deployment")


def agent_of(spec):
    for container in spec.get("initContainers", []) + spec["containers"]:
        if container["name"] == "clef-agent":
            return container
    sys.exit("kube_variant: no clef-agent container")


def check(native_path, plain_path):
    native, plain = load(native_path), load(plain_path)
    native_spec = deployment(native)["spec"]["template"]["spec"]
    plain_spec = deployment(plain)["spec"]["template"]["spec"]
    native_agent = agent_of(native_spec)
    if native_agent is not native_spec.get("initContainers", [None])[0] or native_agent.get("restartPolicy") != "Always":
        sys.exit("kube_variant: sidecar.yaml's agent must be its first init container, restartPolicy: Always")
    if "startupProbe" not in native_agent:
        sys.exit("kube_variant: sidecar.yaml's agent needs a startupProbe (the application waits for it)")
    native_agent = {k: v for k, v in native_agent.items() if k != "restartPolicy"}
    if native_agent != agent_of(plain_spec):
        sys.exit("kube_variant: the agent containers of sidecar.yaml and sidecar-containers.yaml differ")
    for key in ("securityContext", "volumes", "serviceAccountName"):
        if native_spec.get(key) != plain_spec.get(key):
            sys.exit(f"kube_variant: the pods' {key} differ between the two manifests")
    apps = lambda spec: [c for c in spec["containers"] if c["name"] != "clef-agent"]
    if apps(native_spec) != apps(plain_spec):
        sys.exit("kube_variant: the application containers differ between the two manifests")
    others = lambda docs: [d for d in docs if d["kind"] != "Deployment"]
    if others(native) != others(plain):
        sys.exit("kube_variant: the ServiceAccounts differ between the two manifests")


def variant(plain_path, suffix, agent_image, app_image, artifact_dir, key_dir, app_script):
    docs = copy.deepcopy(load(plain_path))
    for doc in docs:
        doc["metadata"]["name"] += suffix
    pod = deployment(docs)
    pod["spec"]["replicas"] = 1
    spec = pod["spec"]["template"]["spec"]
    spec["serviceAccountName"] += suffix
    renamed = {v["name"]: v["name"] + suffix for v in spec["volumes"]}
    for volume in spec["volumes"]:
        if "secret" in volume:
            del volume["secret"]
            volume["hostPath"] = {"path": key_dir, "type": "Directory"}
        volume["name"] = renamed[volume["name"]]
    spec["volumes"].append({"name": "clef-artifact" + suffix, "hostPath": {"path": artifact_dir, "type": "Directory"}})
    for container in spec["containers"]:
        for mount in container.get("volumeMounts", []):
            mount["name"] = renamed[mount["name"]]
    agent = agent_of(spec)
    agent["image"] = agent_image
    agent["env"] = [e for e in agent["env"] if not e["name"].startswith("AWS_")]
    for e in agent["env"]:
        if e["name"] == "CLEF_AGENT_SOURCE":
            e["value"] = "/etc/clef/artifact/demo.age.json"
    agent["volumeMounts"].append({"name": "clef-artifact" + suffix, "mountPath": "/etc/clef/artifact", "readOnly": True})
    app = next(c for c in spec["containers"] if c["name"] == "app")
    app["image"] = app_image
    app["command"] = ["/bin/busybox", "sh", "-c", open(app_script).read()]
    yaml.safe_dump_all(docs, sys.stdout, sort_keys=False)


if __name__ == "__main__":
    if sys.argv[1:2] == ["check"] and len(sys.argv) == 4:
        check(*sys.argv[2:])
    elif sys.argv[1:2] == ["variant"] and len(sys.argv) == 9:
        variant(*sys.argv[2:])
    else:
        sys.exit("usage: kube_variant.py check NATIVE PLAIN | variant PLAIN SUFFIX AGENT_IMAGE APP_IMAGE ARTIFACT_DIR KEY_DIR APP_SCRIPT")

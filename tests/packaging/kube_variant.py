"""The podman variant of packaging/kubernetes/*.yaml, for kubernetes_sidecar.sh.

`check` compares the two manifests: the native sidecar (sidecar.yaml) must run the very agent
container that the plain `containers:` example (sidecar-containers.yaml) runs, with the same pod
settings, so that the pod podman plays stands for both.

`variant` prints the plain example with only what podman 4.3 or this machine cannot have
replaced: S3 is moto_server (AWS_ENDPOINT_URL), the credentials come from IRSA as EKS's webhook
would inject them (AWS_ROLE_ARN, AWS_WEB_IDENTITY_TOKEN_FILE and the token's volume, here a
hostPath), a hostPath directory stands for the age-key Secret (podman writes a Secret volume's
data base64-encoded), the images are built locally, there is one replica, names are made unique
for the test, and busybox is the application.
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


def variant(plain_path, suffix, agent_image, app_image, key_dir, token_dir, endpoint, role_arn, app_script):
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
    spec["volumes"].append({"name": "aws-iam-token" + suffix, "hostPath": {"path": token_dir, "type": "Directory"}})
    for container in spec["containers"]:
        for mount in container.get("volumeMounts", []):
            mount["name"] = renamed[mount["name"]]
    agent = agent_of(spec)
    agent["image"] = agent_image
    # What EKS adds to every container of a pod whose service account names an IRSA role.
    agent["env"] += [
        {"name": "AWS_ENDPOINT_URL", "value": endpoint},
        {"name": "AWS_ROLE_ARN", "value": role_arn},
        {"name": "AWS_WEB_IDENTITY_TOKEN_FILE", "value": "/var/run/secrets/eks.amazonaws.com/serviceaccount/token"},
    ]
    agent["volumeMounts"].append(
        {"name": "aws-iam-token" + suffix, "mountPath": "/var/run/secrets/eks.amazonaws.com/serviceaccount", "readOnly": True}
    )
    app = next(c for c in spec["containers"] if c["name"] == "app")
    app["image"] = app_image
    app["command"] = ["/bin/busybox", "sh", "-c", open(app_script).read()]
    yaml.safe_dump_all(docs, sys.stdout, sort_keys=False)


def source(native_path):
    """The manifest's S3 bucket and key and its IRSA role's name, one a line."""
    docs = load(native_path)
    env = {e["name"]: e["value"] for e in agent_of(deployment(docs)["spec"]["template"]["spec"])["env"]}
    bucket, _, key = env["CLEF_AGENT_SOURCE"].removeprefix("s3://").partition("/")
    account = next(d for d in docs if d["kind"] == "ServiceAccount")
    role = account["metadata"]["annotations"]["eks.amazonaws.com/role-arn"].rpartition("/")[2]
    print(bucket, key, role, sep="\n")


if __name__ == "__main__":
    if sys.argv[1:2] == ["check"] and len(sys.argv) == 4:
        check(*sys.argv[2:])
    elif sys.argv[1:2] == ["variant"] and len(sys.argv) == 11:
        variant(*sys.argv[2:])
    elif sys.argv[1:2] == ["source"] and len(sys.argv) == 3:
        source(sys.argv[2])
    else:
        sys.exit(
            "usage: kube_variant.py check NATIVE PLAIN | source MANIFEST | "
            "variant PLAIN SUFFIX AGENT_IMAGE APP_IMAGE KEY_DIR TOKEN_DIR ENDPOINT ROLE_ARN APP_SCRIPT"
        )

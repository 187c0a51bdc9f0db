#!/usr/bin/env python3
"""Sets up moto_server for the S3/STS/KMS integration tests through its AWS APIs, with boto3.

    moto_admin.py --endpoint http://127.0.0.1:PORT COMMAND ARGS [+ COMMAND ARGS ...]

Several commands may be chained with a lone `+`, so that one Python start does a whole setup;
each prints one line (or nothing; envelope-artifact two). Region us-east-1 unless a KMS command
says otherwise. The credentials are AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY when set (the
admin user, once IAM checks are on), else dummy ones.

Commands:
  create-bucket BUCKET
  put-object BUCKET KEY FILE          prints the object's ETag (quoted, as S3 sends it)
  enable-versioning BUCKET            turns on versioning: every put-object keeps a version
  put-version BUCKET KEY FILE         put-object in a versioned bucket; prints the VersionId
  delete-object BUCKET KEY
  head-object BUCKET KEY              prints the ETag
  create-user NAME [POLICY_JSON]      prints {"AccessKeyId": …, "SecretAccessKey": …}; the
                                      inline policy is attached when given
  create-role NAME POLICY_JSON        prints the role ARN; its trust policy lets the account
                                      (AssumeRole) and a test OIDC provider
                                      (AssumeRoleWithWebIdentity) assume it
  assume-role ROLE_ARN SESSION_NAME   prints {"AccessKeyId", "SecretAccessKey", "Token",
                                      "Expiration"}, the container credentials shape
  put-user-policy NAME POLICY_JSON    replaces the inline policy create-user attached
  enforce-auth [FREE_ACTIONS]         from now on moto checks every request's SigV4 signature
                                      and IAM policies, after FREE_ACTIONS unchecked ones
                                      (default 0): POST /moto-api/reset-auth
  create-kms-key [REGION]             a symmetric KMS key (SYMMETRIC_DEFAULT) in REGION (default
                                      us-east-1); prints its ARN
  envelope-artifact KEY_ARN PLAINTEXT_FILE REVISION [WRAPPING_KEY_ARN]
                                      packs PLAINTEXT_FILE as `clef pack` does with a KMS
                                      envelope: a random 32-byte data key wrapped by KMS Encrypt
                                      (under WRAPPING_KEY_ARN when given, else KEY_ARN; in the
                                      region of the ARN), AES-256-GCM with a random 12-byte IV,
                                      the 16-byte tag apart, no AAD. Prints two lines: the
                                      artifact JSON (envelope.keyId = KEY_ARN) and the data key
                                      in base64, for the test to check that it never leaks
"""

import argparse
import base64
import hashlib
import json
import os
import sys
import urllib.request

import boto3
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

REGION = "us-east-1"
ACCOUNT = "123456789012"


def client(endpoint, service, region=REGION):
    return boto3.client(
        service,
        endpoint_url=endpoint,
        region_name=region,
        aws_access_key_id=os.environ.get("AWS_ACCESS_KEY_ID") or "testing",
        aws_secret_access_key=os.environ.get("AWS_SECRET_ACCESS_KEY") or "testing",
    )


def create_bucket(endpoint, bucket):
    client(endpoint, "s3").create_bucket(Bucket=bucket)


def put_object(endpoint, bucket, key, path):
    with open(path, "rb") as body:
        answer = client(endpoint, "s3").put_object(Bucket=bucket, Key=key, Body=body.read())
    print(answer["ETag"])


def enable_versioning(endpoint, bucket):
    client(endpoint, "s3").put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})


def put_version(endpoint, bucket, key, path):
    with open(path, "rb") as body:
        answer = client(endpoint, "s3").put_object(Bucket=bucket, Key=key, Body=body.read())
    print(answer["VersionId"])


def delete_object(endpoint, bucket, key):
    client(endpoint, "s3").delete_object(Bucket=bucket, Key=key)


def head_object(endpoint, bucket, key):
    print(client(endpoint, "s3").head_object(Bucket=bucket, Key=key)["ETag"])


def create_user(endpoint, name, policy=None):
    iam = client(endpoint, "iam")
    iam.create_user(UserName=name)
    if policy:
        iam.put_user_policy(UserName=name, PolicyName=f"{name}-policy", PolicyDocument=policy)
    key = iam.create_access_key(UserName=name)["AccessKey"]
    print(json.dumps({"AccessKeyId": key["AccessKeyId"], "SecretAccessKey": key["SecretAccessKey"]}))


def put_user_policy(endpoint, name, policy):
    client(endpoint, "iam").put_user_policy(UserName=name, PolicyName=f"{name}-policy", PolicyDocument=policy)


def create_role(endpoint, name, policy):
    iam = client(endpoint, "iam")
    trust = {
        "Version": "2012-10-17",
        "Statement": [
            {"Effect": "Allow", "Principal": {"AWS": f"arn:aws:iam::{ACCOUNT}:root"}, "Action": "sts:AssumeRole"},
            {
                "Effect": "Allow",
                "Principal": {"Federated": f"arn:aws:iam::{ACCOUNT}:oidc-provider/oidc.example.test"},
                "Action": "sts:AssumeRoleWithWebIdentity",
            },
        ],
    }
    role = iam.create_role(RoleName=name, AssumeRolePolicyDocument=json.dumps(trust))["Role"]
    iam.put_role_policy(RoleName=name, PolicyName=f"{name}-policy", PolicyDocument=policy)
    print(role["Arn"])


def assume_role(endpoint, role_arn, session_name):
    credentials = client(endpoint, "sts").assume_role(RoleArn=role_arn, RoleSessionName=session_name)["Credentials"]
    print(
        json.dumps(
            {
                "AccessKeyId": credentials["AccessKeyId"],
                "SecretAccessKey": credentials["SecretAccessKey"],
                "Token": credentials["SessionToken"],
                "Expiration": credentials["Expiration"].strftime("%Y-%m-%dT%H:%M:%SZ"),
            }
        )
    )


def enforce_auth(endpoint, free_actions="0"):
    request = urllib.request.Request(
        f"{endpoint}/moto-api/reset-auth",
        data=str(int(free_actions)).encode(),
        # Not a form: Flask would swallow a form body and moto would read an empty one.
        headers={"Content-Type": "text/plain"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=30) as answer:
        if answer.status != 200:
            raise SystemExit(f"reset-auth answered HTTP {answer.status}")


def create_kms_key(endpoint, region=REGION):
    key = client(endpoint, "kms", region).create_key(KeySpec="SYMMETRIC_DEFAULT", KeyUsage="ENCRYPT_DECRYPT")
    print(key["KeyMetadata"]["Arn"])


def envelope_artifact(endpoint, key_arn, plaintext_file, revision, wrapping_key_arn=None):
    wrapping_key_arn = wrapping_key_arn or key_arn
    # arn:aws:kms:<region>:<account>:key/<id>
    region = wrapping_key_arn.split(":")[3]
    data_key = os.urandom(32)
    wrapped = client(endpoint, "kms", region).encrypt(KeyId=wrapping_key_arn, Plaintext=data_key)["CiphertextBlob"]
    with open(plaintext_file, "rb") as source:
        plaintext = source.read()
    iv = os.urandom(12)
    sealed = AESGCM(data_key).encrypt(iv, plaintext, None)
    ciphertext, tag = sealed[:-16], sealed[-16:]

    def b64(data):
        return base64.b64encode(data).decode("ascii")

    ciphertext_text = b64(ciphertext)
    artifact = {
        "version": 1,
        "identity": "api-gateway",
        "environment": "production",
        "packedAt": "2026-11-24T12:00:00.000Z",
        "revision": revision,
        "ciphertextHash": hashlib.sha256(ciphertext_text.encode("ascii")).hexdigest(),
        "ciphertext": ciphertext_text,
        "envelope": {
            "provider": "aws",
            "keyId": key_arn,
            "wrappedKey": b64(wrapped),
            "algorithm": "SYMMETRIC_DEFAULT",
            "iv": b64(iv),
            "authTag": b64(tag),
        },
    }
    print(json.dumps(artifact))
    print(b64(data_key))


COMMANDS = {
    "create-bucket": (create_bucket, 1, 1),
    "put-object": (put_object, 3, 3),
    "enable-versioning": (enable_versioning, 1, 1),
    "put-version": (put_version, 3, 3),
    "delete-object": (delete_object, 2, 2),
    "head-object": (head_object, 2, 2),
    "create-user": (create_user, 1, 2),
    "create-role": (create_role, 2, 2),
    "assume-role": (assume_role, 2, 2),
    "put-user-policy": (put_user_policy, 2, 2),
    "enforce-auth": (enforce_auth, 0, 1),
    "create-kms-key": (create_kms_key, 0, 1),
    "envelope-artifact": (envelope_artifact, 3, 4),
}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--endpoint", required=True, help="moto_server's URL, http://127.0.0.1:PORT")
    parser.add_argument("commands", nargs=argparse.REMAINDER)
    arguments = parser.parse_args()
    words = arguments.commands
    if not words:
        parser.error("no command")
    chain = [[]]
    for word in words:
        if word == "+":
            chain.append([])
        else:
            chain[-1].append(word)
    for command in chain:
        if not command or command[0] not in COMMANDS:
            parser.error(f"unknown command {command[:1]}; commands: {', '.join(COMMANDS)}")
        function, least, most = COMMANDS[command[0]]
        if not least <= len(command) - 1 <= most:
            parser.error(f"{command[0]} takes {least} to {most} arguments, got {command[1:]}")
        function(arguments.endpoint.rstrip("/"), *command[1:])
        sys.stdout.flush()


if __name__ == "__main__":
    main()

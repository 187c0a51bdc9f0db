#!/usr/bin/env python3
"""Sets up moto_server for the S3/STS integration tests through its AWS APIs, with boto3.

    moto_admin.py --endpoint http://127.0.0.1:PORT COMMAND ARGS [+ COMMAND ARGS ...]

Several commands may be chained with a lone `+`, so that one Python start does a whole setup;
each prints one line (or nothing). Region us-east-1. The credentials are AWS_ACCESS_KEY_ID and
AWS_SECRET_ACCESS_KEY when set (the admin user, once IAM checks are on), else dummy ones.

Commands:
  create-bucket BUCKET
  put-object BUCKET KEY FILE          prints the object's ETag (quoted, as S3 sends it)
  delete-object BUCKET KEY
  head-object BUCKET KEY              prints the ETag
  create-user NAME [POLICY_JSON]      prints {"AccessKeyId": …, "SecretAccessKey": …}; the
                                      inline policy is attached when given
  create-role NAME POLICY_JSON        prints the role ARN; its trust policy lets the account
                                      (AssumeRole) and a test OIDC provider
                                      (AssumeRoleWithWebIdentity) assume it
  assume-role ROLE_ARN SESSION_NAME   prints {"AccessKeyId", "SecretAccessKey", "Token",
                                      "Expiration"}, the container credentials shape
  enforce-auth [FREE_ACTIONS]         from now on moto checks every request's SigV4 signature
                                      and IAM policies, after FREE_ACTIONS unchecked ones
                                      (default 0): POST /moto-api/reset-auth
"""

import argparse
import json
import os
import sys
import urllib.request

import boto3

REGION = "us-east-1"
ACCOUNT = "123456789012"


def client(endpoint, service):
    return boto3.client(
        service,
        endpoint_url=endpoint,
        region_name=REGION,
        aws_access_key_id=os.environ.get("AWS_ACCESS_KEY_ID") or "testing",
        aws_secret_access_key=os.environ.get("AWS_SECRET_ACCESS_KEY") or "testing",
    )


def create_bucket(endpoint, bucket):
    client(endpoint, "s3").create_bucket(Bucket=bucket)


def put_object(endpoint, bucket, key, path):
    with open(path, "rb") as body:
        answer = client(endpoint, "s3").put_object(Bucket=bucket, Key=key, Body=body.read())
    print(answer["ETag"])


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


COMMANDS = {
    "create-bucket": (create_bucket, 1, 1),
    "put-object": (put_object, 3, 3),
    "delete-object": (delete_object, 2, 2),
    "head-object": (head_object, 2, 2),
    "create-user": (create_user, 1, 2),
    "create-role": (create_role, 2, 2),
    "assume-role": (assume_role, 2, 2),
    "enforce-auth": (enforce_auth, 0, 1),
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

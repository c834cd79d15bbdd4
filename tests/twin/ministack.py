"""ministack (a local AWS emulator, from the Makefile's .venv-tools) on 127.0.0.1 for the
shadow sync's end-to-end tests, and its HTTP shadow API through the tools venv's boto3.

Only its HTTP/WebSocket port is used, bound to 127.0.0.1 (``BIND_HOST``); its TLS MQTT
listener, which binds every interface, is off (``IOT_MTLS_ENABLED=0``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.utils import getProcessOutputAndValue

from tests.peerprocess import PeerProcess

TOOLS = Path(__file__).resolve().parents[2] / ".venv-tools" / "bin"
MINISTACK = TOOLS / "ministack"
REGION = "us-east-1"
#: The Host a WebSocket to ministack's IoT data plane must carry.
IOT_HOST = f"data-ats.iot.{REGION}.localhost"
CREDENTIALS = "[default]\naws_access_key_id = {key}\naws_secret_access_key = {secret}\n"

_SHADOW_SCRIPT = """
import json, sys
import boto3
op, port, thing, shadow = sys.argv[1:5]
client = boto3.client("iot-data", endpoint_url=f"http://127.0.0.1:{port}", region_name="%s",
                      aws_access_key_id="test", aws_secret_access_key="test")
kw = {"thingName": thing}
if shadow:
    kw["shadowName"] = shadow
try:
    if op == "get":
        print(client.get_thing_shadow(**kw)["payload"].read().decode())
    else:
        print(client.update_thing_shadow(payload=sys.argv[5].encode(), **kw)["payload"].read().decode())
except client.exceptions.ResourceNotFoundException:
    print("null")
""" % REGION


_IAM_SCRIPT = """
import json, sys
import boto3
iam = boto3.client("iam", endpoint_url=f"http://127.0.0.1:{sys.argv[1]}", region_name="%s",
                   aws_access_key_id="test", aws_secret_access_key="test")
iam.create_user(UserName="gateway")
iam.put_user_policy(UserName="gateway", PolicyName="all", PolicyDocument=json.dumps(
    {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}))
key = iam.create_access_key(UserName="gateway")["AccessKey"]
print(json.dumps([key["AccessKeyId"], key["SecretAccessKey"]]))
""" % REGION


class Ministack(PeerProcess):
    """One ministack process on ``127.0.0.1:port``.

    :param auth: ministack's ``AUTH=true``: every request's SigV4 signature is checked
        (the key ``test`` with the secret ``test`` is valid).
    """

    def __init__(self, reactor: Any, port: int, auth: bool = False) -> None:
        super().__init__(reactor, port)
        self.auth = auth

    @staticmethod
    def available() -> bool:
        """Whether ``make tools-venv`` has installed it."""
        return MINISTACK.exists()

    def start(self) -> Deferred[None]:
        """Start it and wait (30 s at most) until its port accepts connections."""
        env = {"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", "/tmp"),
               "BIND_HOST": "127.0.0.1", "GATEWAY_PORT": str(self.port), "IOT_MTLS_ENABLED": "0",
               "LOG_LEVEL": "WARNING", "AUTH": "true" if self.auth else "false"}
        self.spawn(str(MINISTACK), [str(MINISTACK)], env)
        d: Deferred[None] = self.wait_for_port("ministack", 30, 0.1)
        return d

    @inlineCallbacks
    def shadow(self, op: str, thing: str, shadow: str = "", document: Any = None) -> Any:
        """``get`` (GetThingShadow) or ``update`` (UpdateThingShadow) over HTTP with boto3;
        the JSON answer (``None`` when there is no such shadow)."""
        args = ["-c", _SHADOW_SCRIPT, op, str(self.port), thing, shadow]
        if document is not None:
            args.append(json.dumps(document))
        out, err, code = yield getProcessOutputAndValue(str(TOOLS / "python"), args, env={}, reactor=self.reactor)
        if code != 0:
            raise RuntimeError(f"boto3 {op} failed: {err.decode()[-2000:]}")
        return json.loads(out)

    @inlineCallbacks
    def iam_key(self) -> Any:
        """A new IAM user's ``(access key, secret)``: unlike the root key ``test``, whose
        secret ministack does not check, its signatures are verified under ``auth``."""
        out, err, code = yield getProcessOutputAndValue(str(TOOLS / "python"), ["-c", _IAM_SCRIPT, str(self.port)],
                                                        env={}, reactor=self.reactor)
        if code != 0:
            raise RuntimeError(f"creating an IAM key failed: {err.decode()[-2000:]}")
        return tuple(json.loads(out))

"""The committed descriptor matches the .proto, and it is wire-compatible with both clients.

The client checks run in subprocesses that import Turnout's proto module *first* and then
tritonclient or kserve: each client registers package ``inference`` in protobuf's default
pool, so this proves Turnout's private pool never collides with them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from serving.protocol import proto

ROOT = Path(__file__).resolve().parents[3]

# Printed by a fresh interpreter: every message of the client's file as
# {full name: {field number: [type, repeated, message type]}}, plus the service's methods.
DUMP = """
import json, importlib, sys
import serving.protocol.proto as turnout  # first, on purpose
client = importlib.import_module(sys.argv[1])

def walk(message, out):
    out[message.full_name] = {
        str(f.number): [f.type, f.is_repeated, f.message_type.full_name if f.message_type else ""]
        for f in message.fields}
    for nested in message.nested_types:
        walk(nested, out)

messages = {}
for message in client.DESCRIPTOR.message_types_by_name.values():
    walk(message, messages)
service = client.DESCRIPTOR.services_by_name["GRPCInferenceService"]
methods = {m.name: [m.input_type.full_name, m.output_type.full_name] for m in service.methods}
ping = turnout.ModelInferRequest(model_name="m", raw_input_contents=[b"\\x01"])
parsed = client.ModelInferRequest.FromString(ping.SerializeToString())
print(json.dumps({"messages": messages, "methods": methods,
                  "round_trip": [parsed.model_name, list(parsed.raw_input_contents) == [b"\\x01"]]}))
"""


def _ours() -> dict[str, dict[str, list]]:
    out: dict[str, dict[str, list]] = {}

    def walk(message):
        out[message.full_name] = {
            str(f.number): [f.type, f.is_repeated, f.message_type.full_name if f.message_type else ""]
            for f in message.fields}
        for nested in message.nested_types:
            walk(nested)

    for message in proto.FILE.message_types_by_name.values():
        walk(message)
    return out


def test_committed_descriptor_is_in_sync_with_the_proto():
    # protoc runs in its own process: its embedded protobuf crashes (SIGSEGV) in a process
    # where TensorFlow, loaded by other tests, has registered its own protobuf symbols.
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "gen_proto.py"), "--check"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


def test_check_detects_a_stale_descriptor(tmp_path):
    """--check must fail when the committed module no longer matches the .proto."""
    import shutil

    copy = tmp_path / "repo"
    shutil.copytree(ROOT / "scripts", copy / "scripts")
    shutil.copytree(ROOT / "serving" / "protocol" / "proto", copy / "serving" / "protocol" / "proto")
    stale = copy / "serving" / "protocol" / "proto" / "grpc_predict_v2.proto"
    stale.write_text(stale.read_text() + "\nmessage Extra { string x = 1; }\n")
    done = subprocess.run([sys.executable, str(copy / "scripts" / "gen_proto.py"), "--check"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stdout + done.stderr


def test_private_pool_is_not_the_default_pool():
    from google.protobuf import descriptor_pool

    assert proto.POOL is not descriptor_pool.Default()
    assert proto.ModelInferRequest.DESCRIPTOR.file.pool is proto.POOL
    assert set(proto.METHODS) == {
        "ServerLive", "ServerReady", "ModelReady", "ServerMetadata", "ModelMetadata",
        "ModelInfer", "RepositoryIndex", "RepositoryModelLoad", "RepositoryModelUnload"}


@pytest.mark.parametrize("client_module", [
    "tritonclient.grpc.service_pb2",
    "kserve.protocol.grpc.grpc_predict_v2_pb2",
])
def test_imports_beside_the_client_and_matches_its_wire_format(client_module):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT),
                                                         os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", DUMP, client_module], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    theirs = json.loads(done.stdout)
    assert theirs["round_trip"] == ["m", True]
    ours = _ours()
    # Every RPC we serve has the client's method path and message names.
    for name, (request_cls, response_cls) in proto.METHODS.items():
        if name in theirs["methods"]:
            assert theirs["methods"][name] == [request_cls.DESCRIPTOR.full_name,
                                               response_cls.DESCRIPTOR.full_name]
    assert set(theirs["methods"]) >= {"ModelInfer", "ModelMetadata", "RepositoryModelLoad"}
    # Every field the client knows, in every message we share, has the same number and type;
    # we may know more (Triton's extra parameter kinds, KServe's load/unload answers).
    shared = set(ours) & set(theirs["messages"])
    assert "inference.ModelInferRequest.InferInputTensor" in shared
    for message in shared:
        for number, field in theirs["messages"][message].items():
            assert ours[message].get(number) == field, (message, number)

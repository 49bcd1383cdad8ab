"""The router and a replica run with exactly the args the controller renders for a secured
namespace (router: API keys, JWT + TLS; replica: the same with mTLS), only what a cluster
provides rewritten: the Secrets' and the JWKS ConfigMap's files (a keys file, a JWKS, trustme
certificates) where the pods mount them,
loopback ports for the pod ports, and the replica's address in the routes for its Service's DNS
name. Real processes, real clients (httpx, tritonclient over grpcs):

- no credential: 401 (REST) / UNAUTHENTICATED (gRPC); a key or a JWT: 200 with the model's
  predictions; a token for another audience or from an unknown signer: 401;
- ``spec.turnout.auth`` of the manifest: the principal it names passes, another key gets 403 /
  PERMISSION_DENIED;
- the router's certificate verifies against the CA and fails against another; the probes the
  controller renders pass without credentials; the replica refuses a client without a
  certificate, so every answer above crossed the router's mTLS hop to it;
- Secrets changed the way the kubelet changes them (``..data`` swapped): new keys and a new
  certificate apply without a restart.
"""

from __future__ import annotations

import os
import shutil
import socket
import ssl
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.grpc as tgrpc
import trustme
import yaml
from tritonclient.utils import InferenceServerException

from serving.control.kube import render
from serving.control.kube.render import Owner, Settings
from serving.control.kube.secure import AuthSettings, TlsSettings
from serving.control.policy.plan import Observed, plan
from serving.control.policy.revisions import apply_manifest
from serving.spec import load_texts
from tests.security.auth_support import (
    AUDIENCE,
    ISSUER,
    KEYS,
    Child,
    Signer,
    eventually,
    free_port,
    keys_file,
    write_jwks,
)
from tests.security.tls_certs import peer_serial

pytestmark = pytest.mark.slow

NS = "ml"
KEYS_SECRET, ROUTER_TLS, REPLICA_TLS = "turnout-keys", "router-tls", "replica-tls"
JWKS_CONFIG_MAP = "idp-jwks"
# API keys and JWT on both: the router passes the caller's credential on to the replica.
AUTH = AuthSettings(api_keys_secret=KEYS_SECRET, jwks_config_map=JWKS_CONFIG_MAP,
                    jwt_issuer=ISSUER, jwt_audience=AUDIENCE)
SIGNER = Signer("idp-1")
SETTINGS = Settings(namespace=NS, drain_seconds=1, router_auth=AUTH,
                    router_tls=TlsSettings(ROUTER_TLS), server_auth=AUTH,
                    server_tls=TlsSettings(REPLICA_TLS, verify_clients=True))
MANIFEST = """
apiVersion: serving.kserve.io/v1beta1
kind: InferenceService
metadata: {name: iris, namespace: ml}
spec:
  predictor:
    model: {modelFormat: {name: sklearn}, storageUri: "s3://models/iris"}
  turnout:
    auth: {principals: [alice]}
"""
IRIS_X = [[0.3, -0.2, 1.4, 0.2], [2.0, 1.0, 0.1, -1.0], [-1.0, 0.5, 0.9, 0.0]]
BODY = {"inputs": [{"name": "x", "shape": [3, 4], "datatype": "FP64",
                    "data": [v for row in IRIS_X for v in row]}]}


def secrets(folder: Path, ca: trustme.CA) -> Path:
    """The namespace's Secrets as folders of their keys: the API keys file (alice, bob, ops),
    the router's and the replicas' kubernetes.io/tls Secrets (cert-manager's shape: tls.crt,
    tls.key, ca.crt), certificates naming the Services' DNS names and loopback."""
    (folder / KEYS_SECRET).mkdir(parents=True)
    keys_file(folder / KEYS_SECRET / "keys")
    (folder / JWKS_CONFIG_MAP).mkdir()  # a ConfigMap, kept beside the Secrets
    write_jwks(folder / JWKS_CONFIG_MAP / "jwks.json", SIGNER)
    for name, hosts in ((ROUTER_TLS, (f"turnout-router.{NS}.svc", "localhost", "127.0.0.1")),
                        (REPLICA_TLS, (f"*.{NS}.svc", "localhost"))):
        issued = ca.issue_cert(*hosts)
        (folder / name).mkdir()
        issued.cert_chain_pems[0].write_to_path(str(folder / name / "tls.crt"))
        issued.private_key_pem.write_to_path(str(folder / name / "tls.key"))
        ca.cert_pem.write_to_path(str(folder / name / "ca.crt"))
    trustme.CA().cert_pem.write_to_path(str(folder / "other-ca.crt"))
    return folder


def project(folder: Path, files: dict[str, bytes]) -> None:
    """Write a Secret volume as the kubelet's atomic writer does, first and on every change:
    the files in a new hidden folder, ``..data`` switched to it by one rename, each visible
    name a link through ``..data`` (so a process sees the old set or the new one, never half)."""
    folder.mkdir(parents=True, exist_ok=True)
    stamp = folder / f"..{time.time_ns()}"
    stamp.mkdir()
    for name, blob in files.items():
        (stamp / name).write_bytes(blob)
    data, link = folder / "..data", folder / "..data_tmp"
    old = data.resolve() if data.is_symlink() else None
    link.symlink_to(stamp.name)
    os.replace(link, data)
    for name in files:
        if not (folder / name).is_symlink():
            (folder / name).symlink_to(f"..data/{name}")
    if old is not None:
        shutil.rmtree(old)


def mount(pod: dict, container: dict, secrets_dir: Path, root: Path) -> dict[str, str]:
    """Put each Secret volume's items where the container mounts it (under ``root``), laid
    out as the kubelet does; the mount paths, mapped to their local folders."""
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    paths = {}
    for m in container.get("volumeMounts", []):
        volume = volumes[m["name"]]
        if "secret" in volume:
            name, items = volume["secret"]["secretName"], volume["secret"]["items"]
        elif "items" in volume.get("configMap", {}):  # not the routes: they are rewritten
            name, items = volume["configMap"]["name"], volume["configMap"]["items"]
        else:
            continue
        local = root / m["name"]
        project(local, {item["path"]: (secrets_dir / name / item["key"]).read_bytes()
                        for item in items})
        paths[m["mountPath"]] = str(local)
    return paths


def rewrite(args: list[str], paths: dict[str, str], values: dict[str, str]) -> list[str]:
    """``args`` with mounted paths moved to their local folders and flag values replaced."""
    out = []
    for i, arg in enumerate(args):
        for mounted, local in paths.items():
            if arg.startswith(mounted + "/"):
                arg = local + arg[len(mounted):]
        if i and args[i - 1] in values:
            arg = values[args[i - 1]]
        out.append(arg)
    return out


@dataclass
class Plane:
    router: Child
    replica: Child
    objects: dict
    ca: Path
    other_ca: Path
    router_port: int
    grpc_port: int
    replica_port: int
    secrets: Path
    ca_authority: trustme.CA
    router_mounts: dict[str, str]

    @property
    def url(self) -> str:
        return f"https://localhost:{self.router_port}"

    def verified(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca))


@pytest.fixture(scope="module")
def plane(model_zoo: dict, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Plane]:
    tmp = tmp_path_factory.mktemp("secured")
    authority = trustme.CA()
    secrets_dir = secrets(tmp / "secrets", authority)
    service = load_texts([(Path("iris.yaml"), MANIFEST)]).services[0]
    state = apply_manifest(None, service, now=0)
    ready = {state.stable: render.endpoints(state.stable, SETTINGS)}
    desired = plan(services=[(service, state)], graphs=[], observed=Observed(endpoints=ready))
    objects = {(o["kind"], o["metadata"]["name"]): o for o in render.render(
        desired, {"iris": (service, Owner("iris", "uid"))}, SETTINGS)}

    http, grpc_port, r_http, r_grpc, admin = (free_port() for _ in range(5))
    replica_pod = objects[("Deployment", "iris-00001-predictor")]["spec"]["template"]["spec"]
    replica_c = replica_pod["containers"][0]
    replica_args = rewrite(replica_c["args"], mount(replica_pod, replica_c, secrets_dir,
                                                    tmp / "replica"),
                           {"--host": "127.0.0.1", "--http-port": str(http),
                            "--grpc-port": str(grpc_port)})
    replica_args[1] = str(Path(model_zoo["root"]) / "iris" / "1")  # the storage initializer
    routes = objects[("ConfigMap", "turnout-router-routes")]["data"]["routes.yaml"]
    host = f"iris-00001-predictor.{NS}.svc"  # the Service's name: the replica on loopback
    routes = routes.replace(f"{host}:{render.HTTP_PORT}", f"localhost:{http}") \
        .replace(f"{host}:{render.GRPC_PORT}", f"localhost:{grpc_port}")
    (tmp / "routes.yaml").write_text(routes)
    router_pod = objects[("Deployment", "turnout-router")]["spec"]["template"]["spec"]
    router_c = router_pod["containers"][0]
    router_mounts = mount(router_pod, router_c, secrets_dir, tmp / "router")
    router_args = rewrite(router_c["args"], router_mounts,
                          {"--host": "127.0.0.1", "--http-port": str(r_http),
                           "--grpc-port": str(r_grpc), "--admin-port": str(admin),
                           "--config": str(tmp / "routes.yaml")})
    replica = Child(replica_args, tmp / "replica.log")
    router = Child(router_args, tmp / "router.log")
    built = Plane(router, replica, objects, secrets_dir / ROUTER_TLS / "ca.crt",
                  secrets_dir / "other-ca.crt", r_http, r_grpc, http, secrets_dir,
                  authority, router_mounts)
    try:
        context = built.verified()
        alice = {"authorization": f"Bearer {KEYS['alice']}"}
        router.wait_for(lambda: httpx.post(f"{built.url}/v2/models/iris/infer", json=BODY,
                                           headers=alice, verify=context,
                                           timeout=5).status_code == 200,
                        timeout=90, what=f"the router and its replica\n{replica.log()}")
        yield built
    finally:
        router.stop()
        replica.stop()


def test_the_rendered_args_are_what_ran(plane: Plane) -> None:
    router = plane.router.args
    assert "--insecure" not in router and "--insecure" not in plane.replica.args
    assert {"--api-keys-file", "--jwks", "--tls-cert", "--upstream-ca",
            "--upstream-cert"} <= set(router)
    assert {"--api-keys-file", "--jwks", "--tls-client-ca"} <= set(plane.replica.args)
    routes = yaml.safe_load(plane.objects[("ConfigMap", "turnout-router-routes")]["data"][
        "routes.yaml"])
    service = routes["services"][0]
    assert service["auth"] == {"principals": ["alice"]}
    assert service["variants"][0]["http"][0].startswith("https://")
    assert service["variants"][0]["grpc"][0].startswith("grpcs://")


def test_rest_needs_a_key_and_the_services_principal(plane: Plane, model_zoo: dict) -> None:
    context = plane.verified()
    url = f"{plane.url}/v2/models/iris/infer"
    anonymous = httpx.post(url, json=BODY, verify=context)
    assert anonymous.status_code == 401
    assert anonymous.headers["www-authenticate"].startswith("Bearer")
    assert "error" in anonymous.json()
    alice = httpx.post(url, json=BODY, verify=context, headers={"x-api-key": KEYS["alice"]})
    assert alice.status_code == 200
    assert alice.json()["outputs"][0]["data"] == \
        model_zoo["iris_v1"].predict(np.asarray(IRIS_X)).tolist()
    bob = httpx.post(url, json=BODY, verify=context,
                     headers={"authorization": f"Bearer {KEYS['bob']}"})
    assert bob.status_code == 403
    assert "'bob' may not call 'iris'" in bob.json()["error"]
    wrong = httpx.post(url, json=BODY, verify=context, headers={"x-api-key": "tnt_not_a_key"})
    assert wrong.status_code == 401


def test_jwts_from_the_jwks_config_map_and_the_services_principal(plane: Plane,
                                                                  model_zoo: dict) -> None:
    context = plane.verified()
    url = f"{plane.url}/v2/models/iris/infer"

    def call(token: str) -> httpx.Response:
        return httpx.post(url, json=BODY, verify=context,
                          headers={"authorization": f"Bearer {token}"})

    alice = call(SIGNER.token(sub="alice"))
    assert alice.status_code == 200
    assert alice.json()["outputs"][0]["data"] == \
        model_zoo["iris_v1"].predict(np.asarray(IRIS_X)).tolist()
    assert call(SIGNER.token(sub="svc-b")).status_code == 403
    assert call(SIGNER.token(sub="alice", aud="someone-else")).status_code == 401
    assert call(Signer("stranger").token(sub="alice")).status_code == 401


def test_grpc_needs_a_key_and_the_services_principal(plane: Plane, model_zoo: dict) -> None:
    client = tgrpc.InferenceServerClient(f"localhost:{plane.grpc_port}", ssl=True,
                                         root_certificates=str(plane.ca))
    x = tgrpc.InferInput("x", [3, 4], "FP64")
    x.set_data_from_numpy(np.asarray(IRIS_X, dtype=np.float64))
    try:
        with pytest.raises(InferenceServerException) as anonymous:
            client.infer("iris", [x])
        assert anonymous.value.status() == "StatusCode.UNAUTHENTICATED"
        with pytest.raises(InferenceServerException) as bob:
            client.infer("iris", [x], headers={"authorization": f"Bearer {KEYS['bob']}"})
        assert bob.value.status() == "StatusCode.PERMISSION_DENIED"
        answer = client.infer("iris", [x], headers={"authorization": f"Bearer {KEYS['alice']}"})
        np.testing.assert_array_equal(answer.as_numpy(answer.get_response().outputs[0].name),
                                      model_zoo["iris_v1"].predict(np.asarray(IRIS_X)))
    finally:
        client.close()


def test_tls_verifies_with_the_ca_only(plane: Plane) -> None:
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(f"{plane.url}/v2/health/ready",
                  verify=ssl.create_default_context(cafile=str(plane.other_ca)))
    # plain HTTP on the TLS port: no answer
    with pytest.raises((httpx.ConnectError, httpx.RemoteProtocolError, httpx.ReadError)):
        httpx.get(f"http://localhost:{plane.router_port}/v2/health/ready", timeout=5)
    with httpx.Client(verify=plane.verified()) as client:
        answer = client.get(f"{plane.url}/v2/health/ready")
        assert answer.status_code == 200
        assert answer.extensions["network_stream"].get_extra_info("ssl_object").version() in (
            "TLSv1.2", "TLSv1.3")


def test_the_rendered_probes_pass_without_credentials(plane: Plane) -> None:
    """What the kubelet does: HTTPS without verifying (router), a TCP connect under mTLS
    (replica), no credential either way."""
    router = plane.objects[("Deployment", "turnout-router")]["spec"]["template"]["spec"][
        "containers"][0]
    for probe in (router["readinessProbe"], router["livenessProbe"]):
        get = probe["httpGet"]
        assert get["scheme"] == "HTTPS"
        answer = httpx.get(f"https://127.0.0.1:{plane.router_port}{get['path']}", verify=False)
        assert answer.status_code == 200
    replica = plane.objects[("Deployment", "iris-00001-predictor")]["spec"]["template"][
        "spec"]["containers"][0]
    assert replica["readinessProbe"]["tcpSocket"] == {"port": "http"}
    socket.create_connection(("127.0.0.1", plane.replica_port), timeout=5).close()


def test_the_replica_refuses_clients_without_its_client_certificate(plane: Plane) -> None:
    """So the answers above crossed the router's mTLS hop (it presents the replicas' Secret's
    certificate and verifies theirs with its ca.crt)."""
    url = f"https://localhost:{plane.replica_port}/v2/health/ready"
    context = ssl.create_default_context(cafile=str(plane.ca))
    with pytest.raises((httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError)):
        httpx.get(url, verify=context, timeout=5)
    context.load_cert_chain(plane.secrets / REPLICA_TLS / "tls.crt",
                            plane.secrets / REPLICA_TLS / "tls.key")
    assert httpx.get(url, verify=context, timeout=5).status_code == 200  # the router's view


def test_rotated_secrets_apply_without_a_restart(plane: Plane, tmp_path: Path) -> None:
    """The kubelet swaps a changed Secret's files in place: the router takes the new keys
    (bob's removed: 401; a new key known, though not iris's principal: 403) and presents the
    new certificate to new connections, with the same process."""
    url = f"{plane.url}/v2/models/iris/infer"
    context = plane.verified()
    rotated = {"x-api-key": KEYS["rotated"]}
    assert httpx.post(url, json=BODY, verify=context, headers=rotated).status_code == 401
    keys = keys_file(tmp_path / "keys", ("alice", "rotated", "ops")).read_bytes()
    project(Path(plane.router_mounts["/var/run/turnout/api-keys"]), {"keys": keys})
    eventually(lambda: httpx.post(url, json=BODY, verify=context, headers=rotated)
               .status_code == 403, what="the rotated keys file read")
    bob = {"x-api-key": KEYS["bob"]}
    assert httpx.post(url, json=BODY, verify=context, headers=bob).status_code == 401
    alice = {"x-api-key": KEYS["alice"]}
    assert httpx.post(url, json=BODY, verify=context, headers=alice).status_code == 200

    before = peer_serial(plane.router_port, plane.ca)
    issued = plane.ca_authority.issue_cert(f"turnout-router.{NS}.svc", "localhost", "127.0.0.1")
    project(Path(plane.router_mounts["/var/run/turnout/tls"]),
            {"tls.crt": issued.cert_chain_pems[0].bytes(),
             "tls.key": issued.private_key_pem.bytes()})
    eventually(lambda: peer_serial(plane.router_port, plane.ca) != before,
               what="the new certificate served")
    assert plane.router.proc.poll() is None  # the same process throughout

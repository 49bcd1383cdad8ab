"""Authentication cost: the same h2load traffic to a model server without authentication, one
that requires an API key and one that requires a JWT, REST (V2 JSON over HTTP/1.1) and gRPC,
at several concurrencies.

Usage: python -m loadtests.auth_cost [--duration 4] [--warmup 0.5] [--reps 3]
                                     [--concurrency 1 32] [--models mlp]
                                     [--protocols REST gRPC] [--variants off key jwt]
                                     [--server-cpu 0] [--load-cpu 1] [--no-pin] [--out FILE]

Every server is ``turnout serve`` on the harness's models folder, pinned to the same core and
run one at a time in turn (off, key, jwt, off, …: a drift in the machine's load hits all
alike). ``key``: ``--api-keys-file`` with 20 entries, the client sending one of them as
``authorization: Bearer``; ``jwt``: ``--jwks`` (a file with one RSA key), the client sending one
RS256 token (the server verifies it once, then remembers it until it expires). Every request
carries its credential (h2load ``-H``), so the figures are the per-request cost: finding the
header, hashing the key and comparing it with every entry (or the token cache lookup), and the
ASGI/interceptor layer in front of the app. Without authentication nothing is installed: no
middleware, no interceptor, and the fast path's only extra work is one attribute read.
Besides throughput and latency, the server's CPU time per request (user + system, from
/proc, the warm-up run apart) is recorded: on a machine shared with other work it moves far
less than throughput does. Results are printed as Markdown (RESULTS.md, "Authentication cost")
and written as JSON lines.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import secrets
import statistics
import sys
import tempfile
import time
from pathlib import Path

from loadtests import load, models
from loadtests.router_hop.bench import _start, _stop, _wait_ready
from loadtests.servers import free_port

ISSUER, AUDIENCE = "https://issuer.bench", "turnout-bench"


def credentials(folder: Path) -> dict[str, tuple[list[str], str | None]]:
    """Server flags and the client's authorization header, per variant."""
    import jwt
    from cryptography.hazmat.primitives.asymmetric import rsa
    from jwt.algorithms import RSAAlgorithm

    folder.mkdir(parents=True, exist_ok=True)
    keys = [f"tnt_{secrets.token_urlsafe(32)}" for _ in range(20)]
    keys_file = folder / "api-keys"
    keys_file.write_text("".join(f"client-{i}:inference:{hashlib.sha256(k.encode()).hexdigest()}\n"
                                 for i, k in enumerate(keys)))
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = {**json.loads(RSAAlgorithm.to_jwk(private.public_key())), "kid": "bench", "use": "sig"}
    jwks = folder / "jwks.json"
    jwks.write_text(json.dumps({"keys": [jwk]}))
    token = jwt.encode({"sub": "bench", "iss": ISSUER, "aud": AUDIENCE, "scope": "inference",
                        "exp": int(time.time()) + 24 * 3600}, private, algorithm="RS256",
                       headers={"kid": "bench"})
    return {"off": ([], None),
            "key": (["--api-keys-file", str(keys_file)], f"Bearer {keys[7]}"),
            "jwt": (["--jwks", str(jwks), "--jwt-issuer", ISSUER, "--jwt-audience", AUDIENCE],
                    f"Bearer {token}")}


def with_credential(payload: load.Payload, authorization: str | None) -> load.Payload:
    if authorization is None:
        return payload
    return dataclasses.replace(payload, headers=(*payload.headers,
                                                 f"authorization: {authorization}"))


def probe(payload: load.Payload, port: int, authorization: str | None) -> int:
    """The answer's length, through a real client with the credential (refused without it)."""
    if payload.protocol != "grpc":
        return load.probe(payload, port)
    import grpc

    from serving.protocol import proto

    metadata = [("authorization", authorization)] if authorization else None
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        answer = channel.unary_unary(payload.path)(payload.body_file.read_bytes()[5:],
                                                   timeout=30, metadata=metadata)
    if not proto.ModelInferResponse.FromString(answer).outputs:
        raise load.ProbeError("answer has no outputs")
    return len(answer) + 5


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads) so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def guard_cost(folder: Path, variants: dict[str, tuple[list[str], str | None]],
               number: int = 100_000) -> dict[str, float]:
    """Microseconds per decision of the REST guard in this process (the work the fast path adds
    per request), with the servers' own keys file and JWKS and h2load's request headers."""
    import timeit

    from serving.transport.auth import AuthFields, Guard, build_authenticator

    headers = [(b"host", b"127.0.0.1:8080"), (b"user-agent", b"h2load nghttp2/1.52.0"),
               (b"content-type", b"application/json"), (b"content-length", b"120")]
    out = {}
    for label, (flags, authorization) in variants.items():
        if authorization is None:
            continue
        values = dict(zip(flags[::2], flags[1::2], strict=True))
        settings = AuthFields.model_construct(
            api_keys_file=Path(values["--api-keys-file"]) if "--api-keys-file" in values else None,
            jwks=values.get("--jwks"), jwt_issuer=values.get("--jwt-issuer"),
            jwt_audience=values.get("--jwt-audience"))
        authenticator = build_authenticator(settings)
        assert authenticator is not None
        guard = Guard(authenticator)
        request = [*headers, (b"authorization", authorization.encode())]
        assert guard.check("POST", "/v2/models/mlp/infer", request) is None
        seconds = timeit.timeit(lambda g=guard, r=request: g.check(
            "POST", "/v2/models/mlp/infer", r), number=number)
        out[label] = seconds / number * 1e6
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--duration", type=float, default=4.0, help="seconds per h2load run")
    ap.add_argument("--warmup", type=float, default=0.5)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 32])
    ap.add_argument("--models", nargs="+", default=["mlp"], choices=list(models.MODELS))
    ap.add_argument("--protocols", nargs="+", default=["REST", "gRPC"], choices=["REST", "gRPC"])
    ap.add_argument("--variants", nargs="+", default=["off", "key", "jwt"],
                    choices=["off", "key", "jwt"])
    ap.add_argument("--server-cpu", type=int, default=0)
    ap.add_argument("--load-cpu", type=int, default=1)
    ap.add_argument("--no-pin", action="store_true")
    ap.add_argument("--out", type=Path, default=None, help="JSON lines file (default: a temp dir)")
    args = ap.parse_args(argv)
    if load.h2load_path() is None:
        print("h2load not found (apt-get install nghttp2-client)", file=sys.stderr)
        return 2
    if "off" not in args.variants:
        args.variants.insert(0, "off")  # the baseline every cost is relative to
    server_cpu = None if args.no_pin else args.server_cpu
    load_cpu = None if args.no_pin else args.load_cpu

    work = Path(tempfile.mkdtemp(prefix="turnout-auth-"))
    repo = models.repository(work, args.models)
    variants = {v: c for v, c in credentials(work / "auth").items() if v in args.variants}
    micro = guard_cost(work / "auth", variants)
    servers: dict[str, tuple[int, int, str | None]] = {}
    pids: dict[str, int] = {}
    procs = []
    out = args.out or work / "auth.jsonl"
    rows: list[str] = []
    try:
        for label, (flags, authorization) in variants.items():
            http_port, grpc_port = free_port(), free_port()
            procs.append(_start(["serve", str(repo), "--http-port", str(http_port),
                                 "--grpc-port", str(grpc_port), "--log-level", "warning",
                                 *flags], server_cpu, work / f"server-{label}.log"))
            servers[label] = (http_port, grpc_port, authorization)
            pids[label] = procs[-1].pid
        for http_port, _, _ in servers.values():
            _wait_ready(f"http://127.0.0.1:{http_port}/v2/health/ready")
        cells = [(name, protocol, load.build_payloads(work / "payloads", name, 1)[key_])
                 for name in args.models for protocol, key_ in (("REST", "rest-json"),
                                                                ("gRPC", "grpc"))
                 if protocol in args.protocols]
        for model, protocol, plain in cells:
            payloads = {label: with_credential(plain, authorization)
                        for label, (_, _, authorization) in servers.items()}
            expected = {label: probe(payloads[label],
                                     grpc_port if protocol == "gRPC" else http_port,
                                     authorization)
                        for label, (http_port, grpc_port, authorization) in servers.items()}
            for concurrency in args.concurrency:
                runs: dict[str, list[dict]] = {label: [] for label in servers}
                for _ in range(args.reps):
                    for label, (http_port, grpc_port, _) in servers.items():
                        port = grpc_port if protocol == "gRPC" else http_port
                        for _attempt in range(3):  # h2load now and then ends at once
                            if args.warmup > 0:  # apart, so the CPU time counts only the run
                                load.run_h2load(payloads[label], port, concurrency,
                                                args.warmup, 0, load_cpu, expected[label])
                            before = cpu_seconds(pids[label])
                            result = load.run_h2load(payloads[label], port, concurrency,
                                                     args.duration, 0, load_cpu,
                                                     expected[label])
                            if result.get("completed"):
                                break
                        result["server_cpu_s"] = cpu_seconds(pids[label]) - before
                        result["server_cpu_us_per_request"] = \
                            1e6 * result["server_cpu_s"] / max(1, result["completed"])
                        if not result.get("ok") or result["errors"] or not result["completed"]:
                            raise RuntimeError(f"{protocol} {label} c={concurrency}: {result}")
                        result.update(model=model, protocol=protocol, server=label,
                                      concurrency=concurrency)
                        runs[label].append(result)
                        with out.open("a") as fh:
                            fh.write(json.dumps(result) + "\n")

                def med(label: str, field: str, runs: dict[str, list[dict]] = runs) -> float:
                    return statistics.median(r[field] for r in runs[label])
                base = med("off", "rps")
                cells_md = [f"{med('off', 'rps'):,.0f}"]
                for label in servers:
                    if label != "off":
                        cells_md.append(f"{med(label, 'rps'):,.0f} "
                                        f"({100 * (med(label, 'rps') / base - 1):+.1f}%)")
                cpu = " / ".join(f"{med(label, 'server_cpu_us_per_request'):.0f}"
                                 for label in servers)
                p50 = " / ".join(f"{med(label, 'p50_ms'):.2f}" for label in servers)
                p99 = " / ".join(f"{med(label, 'p99_ms'):.2f}" for label in servers)
                rows.append(f"| {model} | {protocol} | {concurrency} | {' | '.join(cells_md)} | "
                            f"{cpu} | {p50} | {p99} |")
                print(rows[-1], flush=True)
    finally:
        for proc in procs:
            _stop(proc)
    labels = {"off": "off req/s", "key": "API key req/s", "jwt": "JWT req/s"}
    print(f"\nbatch 1, h2load {args.duration:g}s after {args.warmup:g}s warm-up x {args.reps} "
          f"(medians), servers on cpu {server_cpu}, h2load on cpu {load_cpu}; raw: {out}")
    names = " / ".join(servers)
    print(f"| model | protocol | concurrency | {' | '.join(labels[v] for v in servers)} | "
          f"server CPU µs/request ({names}) | p50 ms ({names}) | p99 ms ({names}) |")
    print("|---|---|---|" + "---|" * len(servers) + "---|---|---|")
    print("\n".join(rows))
    print("\nthe guard's decision per request, in this process: " + ", ".join(
        f"{label} {us:.1f} µs" for label, us in micro.items()))
    with out.open("a") as fh:
        fh.write(json.dumps({"kind": "guard", **{f"{k}_us": v for k, v in micro.items()}}) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

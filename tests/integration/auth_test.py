"""auth_test.py — bearer tokens (--auth-token-file) with clients nobody here wrote: curl for REST,
grpcio (stubs generated from api/proto/chord.proto) for gRPC. A real chordd on free loopback
ports with a token file of one admin and one read token: no token, a wrong or malformed one ->
401 / UNAUTHENTICATED (REST: the API's error shape and WWW-Authenticate); a read token on a
write -> 403 / PERMISSION_DENIED and nothing stored; a read token on gets, lists and watches ->
OK; an admin token may write; /healthz and grpc.health.v1 need none; the tokens never reach the
log. A malformed token file, or a non-loopback address without tokens, refuses to start with a
message naming the problem.

TLS (--tls-cert / --tls-key) with certificates the openssl CLI makes here: curl --cacert and a
grpcio secure channel work (tokens too), plain HTTP / an insecure channel and a client without
the CA do not, an expired certificate (`openssl ca -startdate/-enddate`, in the past) is
refused by both clients, and a bad certificate or key file refuses to start naming the file.

Run: CHORDD=build/chordd python -m pytest tests/integration/auth_test.py"""
import json
import os
import secrets
import shutil
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from chordd_harness import (CHORDD, Chordd, Response, TINY_CONFIG, arith_prompts, free_port,
                            jsonl)
from grpc_harness import GrpcChordd, raw_unary, stubs, to_struct

pb, pbg = stubs()

ADMIN = "adm-" + secrets.token_hex(20)
READ = "rd-" + secrets.token_hex(20)

# every REST route but /healthz, with a path that exists or not (auth comes first either way)
READ_ROUTES = ["/metrics", "/v1/datasets", "/v1/datasets/nope", "/v1/models", "/v1/models/nope",
               "/v1/jobs", "/v1/jobs/nope", "/v1/jobs/nope/metrics", "/v1/jobs/nope/samples",
               "/v1/jobs/nope/events", "/v1/jobs/nope/checkpoints",
               "/v1/jobs/nope/checkpoints/1/files/model.safetensors", "/v1/rollouts/nope",
               "/api/v1/healthz", "/api/v1/training_runs", "/api/v1/samplers/nope"]
WRITE_ROUTES = ["/v1/datasets?kind=prompts", "/v1/models", "/v1/jobs", "/v1/jobs/nope/cancel",
                "/v1/rollouts", "/api/v1/create_session", "/api/v1/create_model",
                "/api/v1/forward_backward", "/api/v1/retrieve_future"]


def token_file(text, mode=0o600):
    fd, path = tempfile.mkstemp(prefix="chord-tokens-")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(path, mode)
    return path


def curl(url, method="GET", token=None, data=None, content_type=None, auth_header=None,
         extra=()):
    """(status, headers dict (lower-case names), body bytes) of one request made by curl."""
    cmd = ["curl", "-sS", "-X", method, "-D", "-", "--max-time", "30", *extra]
    if token is not None:
        cmd += ["-H", f"Authorization: Bearer {token}"]
    if auth_header is not None:
        cmd += ["-H", f"Authorization: {auth_header}"]
    if content_type:
        cmd += ["-H", f"Content-Type: {content_type}"]
    if data is not None:
        cmd += ["--data-binary", "@-"]
    p = subprocess.run(cmd + [url], input=data if data is not None else b"", capture_output=True,
                       timeout=60)
    assert p.returncode == 0, f"curl failed ({p.returncode}): {p.stderr.decode()}"
    head, _, body = p.stdout.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for l in lines[1:]:
        k, _, v = l.partition(":")
        headers[k.strip().lower()] = v.strip()
    return status, headers, body


def error_code(body):
    doc = json.loads(body)
    assert set(doc) == {"error"} and set(doc["error"]) == {"code", "message"}, doc
    return doc["error"]["code"]


@pytest.fixture(scope="module")
def tokens():
    path = token_file(f"# chord test tokens\n\nadmin {ADMIN}\n  read\t{READ}  \n")
    yield path
    os.unlink(path)


@pytest.fixture(scope="module")
def srv(tokens):
    s = GrpcChordd(extra_args=["--auth-token-file", tokens]).start()
    yield s
    rc = s.stop()
    log = s.read_log()
    s.cleanup()
    assert rc == 0, "chordd did not exit cleanly on SIGTERM"
    assert "authentication on: 1 admin and 1 read token(s)" in log
    for t in (ADMIN, READ):  # neither a token nor a piece of one
        assert t not in log and t[-12:] not in log, "a token reached the log"


def test_health_needs_no_token(srv):
    status, _, body = curl(srv.url + "/healthz")
    assert status == 200 and json.loads(body)["status"] == "ok"


@pytest.mark.parametrize("path", READ_ROUTES + ["/no/such/endpoint"])
def test_no_token_is_401(srv, path):
    status, headers, body = curl(srv.url + path)
    assert status == 401, body
    assert error_code(body) == "unauthenticated"
    assert headers["www-authenticate"] == 'Bearer realm="chord"'


@pytest.mark.parametrize("path", WRITE_ROUTES)
def test_no_token_on_a_write_is_401(srv, path):
    status, _, body = curl(srv.url + path, "POST", data=b"{}", content_type="application/json")
    assert status == 401 and error_code(body) == "unauthenticated", body


@pytest.mark.parametrize("header", [f"Bearer {ADMIN}x", f"Bearer {READ[:-1]}", "Bearer " + "a" * 40,
                                    f"Basic {ADMIN}", f"Bearer{ADMIN}", "Bearer ", ADMIN,
                                    "Bearer " + "a" * 5000])
def test_wrong_or_malformed_token_is_401(srv, header):
    status, headers, body = curl(srv.url + "/v1/jobs", auth_header=header)
    assert status == 401 and error_code(body) == "unauthenticated", body
    assert 'error="invalid_token"' in headers["www-authenticate"]


def test_scheme_is_case_insensitive(srv):
    assert curl(srv.url + "/v1/jobs", auth_header=f"bearer {READ}")[0] == 200
    assert curl(srv.url + "/v1/jobs", auth_header=f"BEARER   {READ}")[0] == 200


@pytest.mark.parametrize("path", READ_ROUTES)
def test_read_token_may_read(srv, path):
    status, _, body = curl(srv.url + path, token=READ)
    # past authentication: the route's own answer (the unknown ids are 404)
    assert status in (200, 404), body
    assert status == 200 or error_code(body) == "not_found"


def test_read_token_lists_and_metrics(srv):
    for path in ["/v1/datasets", "/v1/models", "/v1/jobs", "/metrics"]:
        assert curl(srv.url + path, token=READ)[0] == 200, path


@pytest.mark.parametrize("path", WRITE_ROUTES)
def test_read_token_on_a_write_is_403(srv, path):
    status, headers, body = curl(srv.url + path, "POST", token=READ, data=b"{}",
                                 content_type="application/json")
    assert status == 403 and error_code(body) == "permission_denied", body
    assert 'error="insufficient_scope"' in headers["www-authenticate"]


def test_read_token_upload_stores_nothing(srv):
    before = json.loads(curl(srv.url + "/v1/datasets", token=READ)[2])["total"]
    status, _, body = curl(srv.url + "/v1/datasets?kind=prompts&name=denied", "POST", token=READ,
                           data=jsonl(arith_prompts(50)), content_type="application/x-ndjson")
    assert status == 403, body
    assert json.loads(curl(srv.url + "/v1/datasets", token=READ)[2])["total"] == before


def test_admin_token_writes_and_reads(srv):
    status, _, body = curl(srv.url + "/v1/datasets?kind=prompts&name=ok", "POST", token=ADMIN,
                           data=jsonl(arith_prompts(5)), content_type="application/x-ndjson")
    assert status == 201, body
    ds = json.loads(body)
    status, _, body = curl(srv.url + f"/v1/datasets/{ds['id']}", token=READ)
    assert status == 200 and json.loads(body)["id"] == ds["id"]
    assert curl(srv.url + f"/v1/datasets/{ds['id']}", token=ADMIN)[0] == 200
    # an admin token passes authentication; the service then judges the document
    status, _, body = curl(srv.url + "/v1/jobs", "POST", token=ADMIN, data=b"{}",
                           content_type="application/json")
    assert status == 400 and error_code(body) == "invalid_argument", body


def test_read_token_on_a_get_only_route_with_post_is_405(srv):
    status, headers, body = curl(srv.url + "/v1/jobs/nope", "POST", token=READ)
    assert status == 405 and headers["allow"] == "GET", body


def test_tinker_x_api_key_is_the_bearer_token(srv):
    """The Tinker client sends X-API-Key (docs/tinker.md): the same tokens and scopes."""
    url = srv.url + "/api/v1/create_session"
    body = b'{"tags": [], "sdk_version": "0.38.0", "type": "create_session"}'
    st, _, b = curl(url, "POST", data=body, content_type="application/json")
    assert st == 401, b
    st, _, b = curl(url, "POST", data=body, content_type="application/json",
                    extra=("-H", f"X-API-Key: {ADMIN}x"))
    assert st == 401, b
    st, _, b = curl(url, "POST", data=body, content_type="application/json",
                    extra=("-H", f"X-API-Key: {READ}"))
    assert st == 403, b
    st, _, b = curl(url, "POST", data=body, content_type="application/json",
                    extra=("-H", f"X-API-Key: {ADMIN}"))
    assert st == 200 and json.loads(b)["session_id"], b


def test_events_stream_needs_a_token(srv):
    assert curl(srv.url + "/v1/jobs/nope/events")[0] == 401
    assert curl(srv.url + "/v1/jobs/nope/events", token=READ)[0] == 404


# ---- gRPC ----------------------------------------------------------------------------------------

def bearer(token):
    return (("authorization", f"Bearer {token}"),)


def upload_chunks(name="g"):
    data = jsonl(arith_prompts(5))
    yield pb.UploadDatasetRequest(kind="prompts", name=name, data=data[:10])
    yield pb.UploadDatasetRequest(data=data[10:])


# (method, request) of every chord.v1.Chord method; the ids do not exist: a call that passes
# authentication is answered by the service (NOT_FOUND, INVALID_ARGUMENT), never by auth
READS = [("GetJob", lambda: pb.GetJobRequest(id="nope")), ("ListJobs", pb.ListJobsRequest),
         ("GetMetrics", lambda: pb.GetMetricsRequest(id="nope")),
         ("ListSamples", lambda: pb.ListSamplesRequest(id="nope")),
         ("ListCheckpoints", lambda: pb.ListCheckpointsRequest(id="nope")),
         ("GetDataset", lambda: pb.GetDatasetRequest(id="nope")),
         ("ListDatasets", pb.ListDatasetsRequest),
         ("GetModel", lambda: pb.GetModelRequest(id="nope")), ("ListModels", pb.ListModelsRequest),
         ("GetRollout", lambda: pb.GetRolloutRequest(id="nope"))]
WRITES = [("CreateJob", lambda: pb.CreateJobRequest(job=to_struct({}))),
          ("CancelJob", lambda: pb.CancelJobRequest(id="nope")),
          ("RegisterModel", lambda: pb.RegisterModelRequest(name="m", path="nope")),
          ("Rollout", lambda: pb.RolloutRequest(prompts=["hi"], model="nope"))]


def grpc_code(fn, *args, **kw):
    try:
        r = fn(*args, timeout=20, **kw)
        if hasattr(r, "__next__"):  # a server stream: its first message (or its status)
            next(r)
        return grpc.StatusCode.OK, ""
    except grpc.RpcError as e:
        return e.code(), e.details()


def call(stub, name, req, token=None, header=None):
    metadata = bearer(token) if token else ((("authorization", header),) if header else None)
    return grpc_code(getattr(stub, name), req, metadata=metadata)


def all_calls():
    """Every chord.v1.Chord method: (name, request factory, is_write, kind)."""
    for name, req in READS:
        yield name, req, False, "unary"
    for name, req in WRITES:
        yield name, req, True, "unary"
    yield "WatchJob", lambda: pb.WatchJobRequest(id="nope"), False, "stream"
    yield "UploadDataset", upload_chunks, True, "upload"


ALL = list(all_calls())


@pytest.mark.parametrize("name,req,write,kind", ALL, ids=[c[0] for c in ALL])
def test_grpc_no_or_wrong_token_is_unauthenticated(srv, name, req, write, kind):
    stub = srv.stub()
    for header in [None, f"Bearer {ADMIN}x", f"Bearer {READ[:-1]}", f"Basic {ADMIN}", ADMIN]:
        code, details = call(stub, name, req(), header=header)
        assert code == grpc.StatusCode.UNAUTHENTICATED, (header, code, details)
        assert ADMIN not in details and READ not in details


@pytest.mark.parametrize("name,req,write,kind", ALL, ids=[c[0] for c in ALL])
def test_grpc_read_token(srv, name, req, write, kind):
    code, details = call(srv.stub(), name, req(), token=READ)
    if write:
        assert code == grpc.StatusCode.PERMISSION_DENIED, (code, details)
        assert "read-only" in details
    else:
        assert code in (grpc.StatusCode.OK, grpc.StatusCode.NOT_FOUND), (code, details)


@pytest.mark.parametrize("name,req,write,kind", ALL, ids=[c[0] for c in ALL])
def test_grpc_admin_token_passes(srv, name, req, write, kind):
    code, details = call(srv.stub(), name, req(), token=ADMIN)
    assert code not in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED,
                        grpc.StatusCode.INTERNAL, grpc.StatusCode.UNAVAILABLE), (code, details)


def test_grpc_read_token_upload_stores_nothing(srv):
    stub = srv.stub()
    before = stub.ListDatasets(pb.ListDatasetsRequest(), metadata=bearer(READ)).total
    code, _ = grpc_code(stub.UploadDataset, upload_chunks("denied"), metadata=bearer(READ))
    assert code == grpc.StatusCode.PERMISSION_DENIED
    assert stub.ListDatasets(pb.ListDatasetsRequest(), metadata=bearer(READ)).total == before


def test_grpc_admin_writes_read_reads(srv):
    stub = srv.stub()
    ds = stub.UploadDataset(upload_chunks("ok"), metadata=bearer(ADMIN), timeout=20)
    assert ds.lines == 5
    assert stub.GetDataset(pb.GetDatasetRequest(id=ds.id), metadata=bearer(READ)).id == ds.id
    m = stub.RegisterModel(pb.RegisterModelRequest(name="tiny", init=pb.ModelInit(
        config=to_struct(TINY_CONFIG))), metadata=bearer(ADMIN), timeout=20)
    assert stub.GetModel(pb.GetModelRequest(id=m.id), metadata=bearer(READ)).id == m.id


def test_grpc_health_needs_no_token(srv):
    h = health_pb2_grpc.HealthStub(srv.channel())
    assert h.Check(health_pb2.HealthCheckRequest(), timeout=10).status == \
        health_pb2.HealthCheckResponse.SERVING
    first = next(h.Watch(health_pb2.HealthCheckRequest(), timeout=10))
    assert first.status == health_pb2.HealthCheckResponse.SERVING


def test_grpc_unknown_method_needs_a_token(srv):
    method = raw_unary(srv.channel(), "/chord.v1.Chord/NoSuchMethod")
    assert grpc_code(method, b"")[0] == grpc.StatusCode.UNAUTHENTICATED
    assert grpc_code(method, b"", metadata=bearer(READ))[0] == grpc.StatusCode.UNIMPLEMENTED


# ---- refusals at start --------------------------------------------------------------------------

def run_chordd(*args, timeout=30):
    with tempfile.TemporaryDirectory(prefix="chordd-auth-") as d:
        p = subprocess.run([CHORDD, "--data-dir", os.path.join(d, "data"), "--device", "cpu",
                            "--threads", "1", *args], capture_output=True, timeout=timeout)
    return p.returncode, p.stdout.decode() + p.stderr.decode()


BAD_FILES = [
    ("", "no tokens"),
    ("# only a comment\n\n", "no tokens"),
    (f"admin {ADMIN}\nwrite {READ}\n", "line 2: the scope must be 'admin' or 'read'"),
    (f"admin {ADMIN}\n{READ}\n", "line 2: expected 'SCOPE TOKEN'"),
    (f"admin {ADMIN} extra\n", "line 1: expected 'SCOPE TOKEN'"),
    ("admin short\n", "line 1: a token must be 16 to 1024 characters"),
    (f"read {READ}\n# c\nadmin {READ}\n", "line 3: the same token as line 1"),
    (f"Admin {ADMIN}\n", "line 1: the scope must be 'admin' or 'read'"),
]


@pytest.mark.parametrize("text,message", BAD_FILES)
def test_malformed_token_file_refuses_to_start(text, message):
    path = token_file(text)
    try:
        rc, out = run_chordd("--http", "127.0.0.1:0", "--grpc", "off", "--auth-token-file", path)
    finally:
        os.unlink(path)
    assert rc == 2, out
    assert message in out and path in out, out
    assert ADMIN not in out and READ not in out, "the refusal printed a token"


def test_missing_token_file_refuses_to_start():
    rc, out = run_chordd("--http", "127.0.0.1:0", "--grpc", "off", "--auth-token-file",
                         "/nonexistent/tokens")
    assert rc == 2 and "--auth-token-file: cannot read /nonexistent/tokens" in out, out


def test_world_readable_token_file_is_a_warning(tokens):
    path = token_file(f"admin {ADMIN}\n", mode=0o644)
    s = Chordd(extra_args=["--auth-token-file", path]).start()
    try:
        assert "readable or writable by other users (mode 644)" in s.read_log()
    finally:
        s.cleanup()
        os.unlink(path)


@pytest.mark.parametrize("flag,addr", [("--http", "0.0.0.0:{}"), ("--grpc", "0.0.0.0:{}"),
                                       ("--http", "[::]:{}")])
def test_non_loopback_without_tokens_refuses_to_start(flag, addr):
    other = "--grpc" if flag == "--http" else "--http"
    rc, out = run_chordd(flag, addr.format(free_port()), other, "off")
    assert rc == 2, out
    assert "is reachable from other machines: give --auth-token-file FILE" in out, out


def serve_briefly(*args, health):
    """Starts chordd with args, waits until `health` (a /healthz URL) answers 200, stops it with
    SIGTERM: its exit status and log."""
    with tempfile.TemporaryDirectory(prefix="chordd-auth-") as d:
        log_path = os.path.join(d, "log")
        with open(log_path, "wb") as log:
            p = subprocess.Popen([CHORDD, "--data-dir", os.path.join(d, "data"), "--device", "cpu",
                                  "--threads", "1", *args], stdout=log, stderr=subprocess.STDOUT)
            try:
                deadline = time.time() + 30
                while time.time() < deadline and p.poll() is None:
                    r = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}",
                                        "--max-time", "2", health], capture_output=True)
                    if r.stdout == b"200":
                        break
                    time.sleep(0.05)
                else:
                    p.kill()
                    raise AssertionError("chordd did not become healthy: " + open(log_path).read())
                p.terminate()
                rc = p.wait(60)
            finally:
                if p.poll() is None:
                    p.kill()
                    p.wait()
        with open(log_path) as f:
            return rc, f.read()


@pytest.mark.parametrize("host,url_host", [("localhost", "localhost"), ("127.0.0.2", "127.0.0.2"),
                                           ("[::1]", "[::1]")])
def test_loopback_names_need_no_tokens(host, url_host):
    if host == "[::1]" and not socket.has_ipv6:
        pytest.skip("no IPv6")
    port = free_port()
    rc, log = serve_briefly("--http", f"{host}:{port}", "--grpc", "off",
                            health=f"http://{url_host}:{port}/healthz")
    assert rc == 0, log


def test_insecure_no_auth_allows_it():
    port = free_port()
    rc, log = serve_briefly("--http", f"0.0.0.0:{port}", "--grpc", "off", "--insecure-no-auth",
                            health=f"http://127.0.0.1:{port}/healthz")
    assert rc == 0, log
    assert "serves without authentication (--insecure-no-auth)" in log, log


def test_non_loopback_with_tokens_starts(tokens):
    port = free_port()
    rc, log = serve_briefly("--http", f"0.0.0.0:{port}", "--grpc", "off", "--auth-token-file",
                            tokens, health=f"http://127.0.0.1:{port}/healthz")
    assert rc == 0, log


def test_tokens_and_insecure_together_are_refused(tokens):
    rc, out = run_chordd("--http", "127.0.0.1:0", "--grpc", "off", "--auth-token-file", tokens,
                         "--insecure-no-auth")
    assert rc == 2 and "give one, not both" in out, out


# ---- TLS -------------------------------------------------------------------------------------------

SAN = "subjectAltName=DNS:localhost,IP:127.0.0.1"
CA_CONFIG = """[ca]
default_ca = ca_default
[ca_default]
database = index.txt
new_certs_dir = .
serial = serial
default_md = sha256
policy = policy_any
copy_extensions = copy
unique_subject = no
[policy_any]
commonName = supplied
"""


def openssl(*args, cwd):
    p = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, timeout=60)
    assert p.returncode == 0, f"openssl {' '.join(args)}: {p.stderr.decode()}"


@pytest.fixture(scope="module")
def certs():
    """A directory with cert.pem/key.pem (valid, self-signed, for localhost and 127.0.0.1),
    expired.pem/expired-key.pem (valid 2020-01-01 to 2020-01-02), other-key.pem (not cert's),
    encrypted-key.pem (cert's key with a pass phrase) and garbage.pem."""
    if not shutil.which("openssl"):
        pytest.skip("the openssl CLI is missing (Debian package openssl)")
    d = tempfile.mkdtemp(prefix="chord-tls-")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    openssl("req", "-x509", *ec, "-keyout", "key.pem", "-out", "cert.pem", "-days", "2",
            "-subj", "/CN=localhost", "-addext", SAN, cwd=d)
    # openssl 3.0's req / x509 take no start date: a one-entry CA database signs the request
    # with its own key for a validity period in the past
    with open(os.path.join(d, "ca.cnf"), "w") as f:
        f.write(CA_CONFIG)
    open(os.path.join(d, "index.txt"), "w").close()
    with open(os.path.join(d, "serial"), "w") as f:
        f.write("01\n")
    openssl("req", "-new", *ec, "-keyout", "expired-key.pem", "-out", "expired.csr",
            "-subj", "/CN=localhost", "-addext", SAN, cwd=d)
    openssl("ca", "-batch", "-notext", "-config", "ca.cnf", "-selfsign", "-keyfile",
            "expired-key.pem", "-in", "expired.csr", "-out", "expired.pem",
            "-startdate", "20200101000000Z", "-enddate", "20200102000000Z", cwd=d)
    openssl("genpkey", "-algorithm", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-out", "other-key.pem", cwd=d)
    openssl("pkey", "-in", "key.pem", "-aes256", "-passout", "pass:secret", "-out",
            "encrypted-key.pem", cwd=d)
    with open(os.path.join(d, "garbage.pem"), "w") as f:
        f.write("-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n")
    for name in os.listdir(d):
        os.chmod(os.path.join(d, name), 0o600)
    yield d
    shutil.rmtree(d, ignore_errors=True)


class TlsChordd(GrpcChordd):
    """A GrpcChordd serving TLS on both ports; the harness's HTTP goes over https with the
    certificate as the only CA (or, verify=False, no verification: the expired one)."""

    def __init__(self, cert, key, extra_args=(), verify=True):
        self.cert, self.verify = cert, verify
        super().__init__(extra_args=["--tls-cert", cert, "--tls-key", key, *extra_args])

    @property
    def url(self):
        return f"https://127.0.0.1:{self.port}"

    def request(self, method, path, body=None, headers=None, timeout=30):
        ctx = ssl.create_default_context(cafile=self.cert) if self.verify else \
            ssl._create_unverified_context()
        req = urllib.request.Request(self.url + path, data=body, method=method,
                                     headers=dict(headers or {}))
        try:
            with urllib.request.urlopen(req, timeout=timeout, context=ctx) as r:
                return Response(r.status, dict(r.headers), r.read())
        except urllib.error.HTTPError as e:
            return Response(e.code, dict(e.headers), e.read())

    def channel(self, root=None):
        if root is None and self._channel is not None:
            return self._channel
        with open(root or self.cert, "rb") as f:
            ch = grpc.secure_channel(self.target, grpc.ssl_channel_credentials(f.read()))
        if root is None:
            self._channel = ch
        return ch


@pytest.fixture(scope="module")
def tls_srv(certs, tokens):
    s = TlsChordd(os.path.join(certs, "cert.pem"), os.path.join(certs, "key.pem"),
                  ["--auth-token-file", tokens]).start()
    yield s
    rc = s.stop()
    log = s.read_log()
    s.cleanup()
    assert rc == 0
    assert "TLS on (REST https, gRPC TLS): certificate /CN=localhost" in log, log
    assert ADMIN not in log and READ not in log


def test_tls_curl_with_the_ca(tls_srv, certs):
    ca = ["--cacert", os.path.join(certs, "cert.pem")]
    for host in ["127.0.0.1", "localhost"]:
        url = f"https://{host}:{tls_srv.port}"
        assert curl(url + "/healthz", extra=ca)[0] == 200
        assert curl(url + "/v1/jobs", extra=ca)[0] == 401
        assert curl(url + "/v1/jobs", token=READ, extra=ca)[0] == 200
        status, _, body = curl(url + "/v1/datasets?kind=prompts&name=tls", "POST", token=ADMIN,
                               data=jsonl(arith_prompts(3)), content_type="application/x-ndjson",
                               extra=ca)
        assert status == 201, body


def test_tls_refuses_plain_http_and_unknown_ca(tls_srv):
    p = subprocess.run(["curl", "-sS", "--max-time", "10", f"http://127.0.0.1:{tls_srv.port}/healthz"],
                       capture_output=True)
    assert p.returncode != 0 or not p.stdout.startswith(b"{"), p
    p = subprocess.run(["curl", "-sS", "--max-time", "10", f"https://127.0.0.1:{tls_srv.port}/healthz"],
                       capture_output=True)
    assert p.returncode == 60, p  # curl: the peer's certificate cannot be verified


def test_tls_old_protocol_versions_refused(tls_srv, certs):
    p = subprocess.run(["curl", "-sS", "--max-time", "10", "--cacert",
                        os.path.join(certs, "cert.pem"), "--tlsv1.1", "--tls-max", "1.1",
                        f"https://127.0.0.1:{tls_srv.port}/healthz"], capture_output=True)
    assert p.returncode != 0, p


def test_tls_grpc_secure_channel(tls_srv):
    stub = pbg.ChordStub(tls_srv.channel())
    assert stub.ListJobs(pb.ListJobsRequest(), metadata=bearer(READ), timeout=20).total >= 0
    assert grpc_code(stub.ListJobs, pb.ListJobsRequest())[0] == grpc.StatusCode.UNAUTHENTICATED
    code, _ = grpc_code(stub.CreateJob, pb.CreateJobRequest(job=to_struct({})),
                        metadata=bearer(READ))
    assert code == grpc.StatusCode.PERMISSION_DENIED
    h = health_pb2_grpc.HealthStub(tls_srv.channel())
    assert h.Check(health_pb2.HealthCheckRequest(), timeout=10).status == \
        health_pb2.HealthCheckResponse.SERVING
    with grpc.insecure_channel(tls_srv.target) as plain:
        code, _ = grpc_code(health_pb2_grpc.HealthStub(plain).Check, health_pb2.HealthCheckRequest())
    assert code == grpc.StatusCode.UNAVAILABLE


def test_tls_expired_certificate_is_refused_by_clients(certs):
    expired = os.path.join(certs, "expired.pem")
    s = TlsChordd(expired, os.path.join(certs, "expired-key.pem"), verify=False).start()
    try:
        assert "tls: the certificate in " + expired + " expired on Jan  2 00:00:00 2020 GMT" \
            in s.read_log()
        p = subprocess.run(["curl", "-sS", "--max-time", "10", "--cacert", expired,
                            f"https://127.0.0.1:{s.port}/healthz"], capture_output=True)
        assert p.returncode == 60 and b"expired" in p.stderr, p
        ch = s.channel(root=expired)
        code, details = grpc_code(health_pb2_grpc.HealthStub(ch).Check,
                                  health_pb2.HealthCheckRequest())
        ch.close()
        assert code == grpc.StatusCode.UNAVAILABLE, (code, details)
        # the server itself serves: it is the clients that refuse the certificate
        assert curl(f"https://127.0.0.1:{s.port}/healthz", extra=["-k"])[0] == 200
    finally:
        s.cleanup()


TLS_BAD = [
    (["--tls-cert", "cert.pem"], "--tls-cert and --tls-key go together"),
    (["--tls-key", "key.pem"], "--tls-cert and --tls-key go together"),
    (["--tls-cert", "missing.pem", "--tls-key", "key.pem"], "--tls-cert: {d}/missing.pem: No such file"),
    (["--tls-cert", "cert.pem", "--tls-key", "missing.pem"], "--tls-key: {d}/missing.pem: No such file"),
    (["--tls-cert", "garbage.pem", "--tls-key", "key.pem"],
     "--tls-cert: {d}/garbage.pem holds no PEM certificate"),
    (["--tls-cert", "key.pem", "--tls-key", "key.pem"],
     "--tls-cert: {d}/key.pem holds no PEM certificate"),
    (["--tls-cert", "cert.pem", "--tls-key", "cert.pem"],
     "--tls-key: {d}/cert.pem holds no unencrypted PEM private key"),
    (["--tls-cert", "cert.pem", "--tls-key", "encrypted-key.pem"],
     "--tls-key: {d}/encrypted-key.pem holds no unencrypted PEM private key"),
    (["--tls-cert", "cert.pem", "--tls-key", "other-key.pem"],
     "--tls-key: {d}/other-key.pem is not the key of the certificate in {d}/cert.pem"),
]


@pytest.mark.parametrize("args,message", TLS_BAD, ids=[m.split(":")[0] + "-" + str(i)
                                                       for i, (_, m) in enumerate(TLS_BAD)])
def test_tls_bad_files_refuse_to_start(certs, args, message):
    args = [a if a.startswith("--") else os.path.join(certs, a) for a in args]
    rc, out = run_chordd("--http", "127.0.0.1:0", "--grpc", "127.0.0.1:0", *args)
    assert rc == 2, out
    assert message.format(d=certs) in out, out

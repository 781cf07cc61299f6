"""grpc_harness.py — what the gRPC integration tests share: Python stubs generated at test time by
grpcio-tools from api/proto/chord.proto (into a temp dir, never committed), a real chordd with
both REST and gRPC on free loopback ports (chordd_harness.Chordd), and a field-by-field check
that a gRPC message carries exactly the REST resource's fields and values.

Not a test by itself."""
import importlib
import os
import sys
import tempfile

import grpc
from grpc_tools import protoc
from google.protobuf import json_format

from chordd_harness import Chordd, free_port

PROTO_DIR = os.environ.get(
    "CHORD_PROTO_DIR",
    os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "api", "proto"))

_stubs = None


def stubs():
    """(chord_pb2, chord_pb2_grpc), generated once per process from api/proto/chord.proto."""
    global _stubs
    if _stubs is None:
        out = tempfile.mkdtemp(prefix="chord-grpc-stubs-")
        include = os.path.join(os.path.dirname(protoc.__file__), "_proto")
        rc = protoc.main(["grpc_tools.protoc", f"-I{PROTO_DIR}", f"-I{include}",
                          f"--python_out={out}", f"--grpc_python_out={out}",
                          os.path.join(PROTO_DIR, "chord.proto")])
        assert rc == 0, "grpc_tools.protoc failed on chord.proto"
        sys.path.insert(0, out)
        _stubs = (importlib.import_module("chord_pb2"), importlib.import_module("chord_pb2_grpc"))
    return _stubs


class GrpcChordd(Chordd):
    """A Chordd that also serves gRPC on a free port (the later --grpc wins over the harness's
    --grpc off)."""

    def __init__(self, extra_args=(), **kw):
        self.grpc_port = free_port()
        super().__init__(extra_args=["--grpc", f"127.0.0.1:{self.grpc_port}"] + list(extra_args),
                         **kw)
        self._channel = None

    @property
    def target(self):
        return f"127.0.0.1:{self.grpc_port}"

    def channel(self):
        if self._channel is None:
            self._channel = grpc.insecure_channel(self.target)
        return self._channel

    def stub(self):
        return stubs()[1].ChordStub(self.channel())

    def stop(self, *a, **kw):
        rc = super().stop(*a, **kw)
        if self._channel is not None:
            self._channel.close()
            self._channel = None
        return rc


def raw_unary(channel, method):
    """A unary method with identity serializers: send any bytes, get the raw reply."""
    return channel.unary_unary(method, request_serializer=lambda b: b,
                               response_deserializer=lambda b: b)


def to_struct(doc):
    from google.protobuf import struct_pb2
    s = struct_pb2.Struct()
    s.update(doc)
    return s


def struct_to_py(s):
    return json_format.MessageToDict(s)


def assert_same(rest, msg, path=""):
    """msg has exactly the REST resource's fields, with the same values: a REST null is the
    proto default ("" / 0 / absent message / unset oneof), a Struct equals the JSON document."""
    fields = {f.name: f for f in msg.DESCRIPTOR.fields}
    assert set(rest) == set(fields), f"{path}: REST-only {set(rest) - set(fields)}, " \
                                     f"gRPC-only {set(fields) - set(rest)}"
    for k, v in rest.items():
        f = fields[k]
        where = f"{path}.{k}" if path else k
        got = getattr(msg, k)
        mt = f.message_type
        if mt is not None and mt.full_name == "google.protobuf.Struct":
            if v is None:
                assert not msg.HasField(k), where
            else:
                assert struct_to_py(got) == v, where
        elif f.is_repeated:
            assert isinstance(v, list), where
            assert len(got) == len(v), where
            for i, (a, b) in enumerate(zip(v, got)):
                if mt is not None:
                    assert_same(a, b, f"{where}[{i}]")
                else:
                    assert a == b, f"{where}[{i}]"
        elif mt is not None:
            if v is None:
                assert not msg.HasField(k), where
            else:
                assert_same(v, got, where)
        elif v is None:
            if f.containing_oneof is not None:
                assert msg.WhichOneof(f.containing_oneof.name) is None, where
            else:
                assert got == f.default_value, (where, got)
        else:
            assert got == v, (where, got, v)

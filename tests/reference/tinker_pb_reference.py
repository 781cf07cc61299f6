"""tinker_pb_reference.py — chord's Tinker protobuf codec against the real client (PyPI tinker).

Requests: built from the client's own types (Datum, ModelInput chunks, loss_fn_inputs as lists,
numpy arrays and 2-D torch tensors, which the client sends as sparse CSR), encoded by the client's
tinker.proto.request_conv exactly as TrainingClient.forward_backward / forward do, then decoded by
chord (tinker_pb_dump decode) and compared value for value with what was sent. Malformed or
unsupported requests (an image chunk, cut bytes) must be refused with a message naming the field.

Results: chord encodes ForwardBackwardOutput and SampleResponse (tinker_pb_dump encode_fb /
encode_sample); the client's tinker.proto.response_conv decodes them into its own types, and the
client's metric reduction (chunked_fwdbwd_helpers) runs over them, as in a real call.

Usage: python tinker_pb_reference.py path/to/tinker_pb_dump
"""
import json
import math
import subprocess
import sys

import numpy as np
import torch
from tinker import types
from tinker.lib.chunked_fwdbwd_helpers import combine_fwd_bwd_output_results
from tinker.proto import request_conv, response_conv

DUMP = sys.argv[1] if len(sys.argv) > 1 else "tinker_pb_dump"
failures = 0


def check(ok, what):
    global failures
    print(f"{'ok' if ok else 'FAIL':4} {what}")
    if not ok:
        failures += 1


def run(mode, data):
    res = subprocess.run([DUMP, mode], input=data, capture_output=True, timeout=60)
    if res.returncode:
        sys.exit(f"tinker_pb_dump {mode} failed ({res.returncode}): {res.stderr.decode()}")
    return res.stdout


def to_json_float(v):
    v = float(v)
    if math.isnan(v):
        return "nan"
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    return v


def from_json_float(v):
    return {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}[v] if isinstance(v, str) else v


def same_float(a, b):
    return (math.isnan(a) and math.isnan(b)) or (a == b and math.copysign(1, a) == math.copysign(1, b))


def request_bytes(data, loss_fn, config=None, forward_only=False, model_id="s:train:0", seq_id=1):
    """The body TrainingClient sends: request_conv, then forward_only set as the resource does."""
    req = types.ForwardBackwardRequest(
        forward_backward_input=types.ForwardBackwardInput(data=data, loss_fn=loss_fn,
                                                          loss_fn_config=config),
        model_id=model_id, seq_id=seq_id)
    msg = request_conv.forward_backward_request_to_proto(req)
    msg.forward_only = forward_only
    return msg, msg.SerializeToString()


def expected_tensor(td):
    """What chord must decode a client TensorData to: dtype, shape, flat values (sparse densified
    with pad 0, as the client's own to_numpy does)."""
    arr = np.asarray(td.to_numpy(pad_value=0))
    shape = list(td.shape) if td.shape is not None else [arr.size]
    return td.dtype, shape, arr.reshape(-1).tolist()


def compare_request(name, data, loss_fn, config=None, forward_only=False, seq_id=1):
    msg, body = request_bytes(data, loss_fn, config, forward_only, seq_id=seq_id)
    got = json.loads(run("decode", body))
    if "error" in got:
        check(False, f"{name}: chord refused it: {got['error']}")
        return msg
    problems = []
    if got["model_id"] != "s:train:0" or got["seq_id"] != seq_id or got["loss_fn"] != loss_fn:
        problems.append(f"header {got['model_id']} {got['seq_id']} {got['loss_fn']}")
    if got["forward_only"] != forward_only:
        problems.append("forward_only")
    want_config = {} if config is None else {k: (v if isinstance(v, str) else float(v))
                                             for k, v in config.items()}
    got_config = {k: v["text"] if isinstance(v, dict) else from_json_float(v)
                  for k, v in got["config"].items()}
    if got_config != want_config:
        problems.append(f"config {got_config} != {want_config}")
    if len(got["data"]) != len(data):
        problems.append(f"{len(got['data'])} datums, sent {len(data)}")
    for i, (datum, g) in enumerate(zip(data, got["data"])):
        if g["tokens"] != datum.model_input.to_ints():
            problems.append(f"data[{i}].tokens")
        if set(g["loss_fn_inputs"]) != set(datum.loss_fn_inputs):
            problems.append(f"data[{i}] input names {sorted(g['loss_fn_inputs'])}")
            continue
        for key, td in datum.loss_fn_inputs.items():
            dtype, shape, values = expected_tensor(td)
            t = g["loss_fn_inputs"][key]
            got_values = [from_json_float(v) for v in t["data"]]
            if t["dtype"] != dtype or t["shape"] != shape:
                problems.append(f"data[{i}].{key}: {t['dtype']} {t['shape']}, sent {dtype} {shape}")
            elif dtype == "int64" and got_values != values:
                problems.append(f"data[{i}].{key}: values differ")
            elif dtype == "float32" and not all(
                    same_float(a, float(np.float32(b))) for a, b in zip(got_values, values)):
                problems.append(f"data[{i}].{key}: values differ")
            elif len(got_values) != len(values):
                problems.append(f"data[{i}].{key}: {len(got_values)} values, sent {len(values)}")
    check(not problems, f"{name}: {len(body)} bytes, {len(data)} datums" +
          (": " + "; ".join(problems) if problems else ""))
    return msg


def expect_refused(name, body, want):
    got = json.loads(run("decode", body))
    ok = "error" in got and want in got["error"] and got["code"] == 1
    check(ok, f"{name}: refused with {got.get('error')!r}")


def text_datum(tokens, chunk_sizes, **inputs):
    chunks, at = [], 0
    for n in chunk_sizes:
        chunks.append(types.EncodedTextChunk(tokens=tokens[at:at + n]))
        at += n
    return types.Datum(model_input=types.ModelInput(chunks=chunks), loss_fn_inputs=inputs)


def requests():
    rng = np.random.default_rng(15)
    # cross_entropy as the SL cookbook builds it: lists, one chunk per message part
    seq = [151644, 872, 198, 9707, 0, 151645, 198, 151644, 77091]
    d0 = text_datum(seq[:-1], [3, 3, 2], target_tokens=seq[1:], weights=[0, 0, 0, 1, 1, 1, 0.5, 0.25])
    # numpy inputs and provenance spans (which chord reads past)
    toks = rng.integers(0, 50000, size=12).tolist()
    d1 = text_datum(toks[:-1], [11], target_tokens=np.asarray(toks[1:], dtype=np.int64),
                    weights=rng.random(11, dtype=np.float32))
    d1 = d1.with_provenance(
        model_input=[types.PromptProvenanceSpan(sequence_id="p", length=4),
                     types.SampledProvenanceSpan(sequence_id="s:sample:0:1", offset=0, length=7)],
        loss_fn_inputs=[types.PromptProvenanceSpan(sequence_id="p", length=3),
                        types.SampledProvenanceSpan(sequence_id="s:sample:0:1", length=8)])
    compare_request("cross_entropy, lists and numpy, spans", [d0, d1], "cross_entropy")
    compare_request("forward only", [d0], "cross_entropy", forward_only=True, seq_id=9)

    # RL losses: logprobs and advantages as numpy / torch, config numbers (both maps) and text
    rl = []
    for n in (1, 5, 64):
        t = rng.integers(0, 32000, size=n + 1)
        rl.append(text_datum(t[:-1].tolist(), [n], target_tokens=torch.tensor(t[1:]),
                             logprobs=-rng.random(n, dtype=np.float32) * 5,
                             advantages=torch.randn(n)))
    compare_request("ppo, config numbers", rl, "ppo",
                    {"clip_low_threshold": 0.8, "clip_high_threshold": 1.2})
    compare_request("importance_sampling, config text and number", rl, "importance_sampling",
                    {"loss_id": "abc", "beta": 0.125})
    # bfloat16 torch tensors are widened to float32 by the client
    bf = text_datum([1, 2, 3], [3], target_tokens=[2, 3, 4],
                    weights=torch.tensor([0.5, -1.0, 3.0], dtype=torch.bfloat16))
    compare_request("bfloat16 torch weights", [bf], "cross_entropy")
    # special floats
    sp = text_datum([1, 2, 3, 4], [2, 2], target_tokens=[2, 3, 4, 5],
                    advantages=np.array([np.inf, -np.inf, -0.0, 3.4e38], dtype=np.float32),
                    logprobs=np.array([np.nan, 1e-45, -1e-38, 0], dtype=np.float32))
    compare_request("inf, -0, denormals, NaN", [sp], "importance_sampling")
    # an empty datum and empty inputs
    compare_request("empty datum", [text_datum([], [], target_tokens=np.zeros(0, np.int64),
                                               weights=np.zeros(0, np.float32))], "cross_entropy")

    # 2-D [N, K] multi-target inputs: torch tensors the client sends as sparse CSR
    n, k = 16, 6
    tt = torch.zeros(n, k, dtype=torch.int64)
    ww = torch.zeros(n, k)
    for r in range(n):
        for c in rng.choice(k, size=int(rng.integers(0, 3)), replace=False):
            tt[r, c] = int(rng.integers(1, 50000))
            ww[r, c] = float(rng.random()) + 0.5
    sparse = text_datum(list(range(n)), [n], target_tokens=tt, weights=ww,
                        advantages=torch.randn(n, k))  # not sparse-eligible: sent dense 2-D
    msg = compare_request("2-D target_tokens / weights, sparse CSR", [sparse], "cross_entropy")
    sent = msg.data[0].loss_fn_inputs
    check(sent["target_tokens"].HasField("sparse_csr") and sent["weights"].HasField("sparse_csr")
          and sent["advantages"].HasField("dense"),
          "the client really sent target_tokens and weights sparse, advantages dense")
    full = text_datum([1, 2], [2], target_tokens=torch.tensor([[5, 6, 7], [8, 9, 10]]))
    msg = compare_request("2-D dense (too full for sparse)", [full], "cross_entropy")
    check(msg.data[0].loss_fn_inputs["target_tokens"].HasField("dense"), "  ... sent dense")

    # random batches
    for case in range(20):
        data = []
        for _ in range(int(rng.integers(1, 5))):
            n = int(rng.integers(0, 200))
            t = rng.integers(0, 2**31 - 1, size=n + 1)
            cuts = sorted(rng.integers(0, n + 1, size=int(rng.integers(0, 4))).tolist())
            sizes = [b - a for a, b in zip([0] + cuts, cuts + [n])]
            data.append(text_datum(t[:-1].tolist(), sizes, target_tokens=t[1:].tolist(),
                                   weights=rng.standard_normal(n).astype(np.float32).tolist(),
                                   advantages=rng.standard_normal(n).astype(np.float32)))
        compare_request(f"random batch {case}", data, "cross_entropy")

    # refused: an image chunk, a dmel chunk, bytes cut in the middle of a field
    img = types.Datum(model_input=types.ModelInput(chunks=[
        types.EncodedTextChunk(tokens=[1, 2]),
        types.ImageChunk(data=b"\x89PNG....", format="png", expected_tokens=4)]),
        loss_fn_inputs={"target_tokens": [1, 2, 3, 4, 5, 6]})
    _, body = request_bytes([img], "cross_entropy")
    expect_refused("image chunk", body, "data[0].model_input[1]: image chunks are not supported")
    dm = types.Datum(model_input=types.ModelInput(chunks=[types.DmelChunk(dmel=b"\x00\x01")]),
                     loss_fn_inputs={})
    _, body = request_bytes([dm], "cross_entropy")
    expect_refused("dmel chunk", body, "data[0].model_input[0]: dmel (audio) chunks are not supported")
    _, body = request_bytes([d0, d1], "cross_entropy")
    expect_refused("cut bytes", body[:-5], "not a valid protobuf message")
    # a hand-edited message: weights with 10 bytes (a client could not send that)
    msg, _ = request_bytes([d0], "cross_entropy")
    msg.data[0].loss_fn_inputs["weights"].dense = b"\x00" * 10
    expect_refused("dense bytes not a multiple of 4", msg.SerializeToString(),
                   "data[0].loss_fn_inputs.weights: dense bytes 10 not a multiple of 4")
    msg, _ = request_bytes([d0], "cross_entropy")
    del msg.data[0].loss_fn_inputs["weights"].shape[:]
    msg.data[0].loss_fn_inputs["weights"].shape.extend([2, 3])
    expect_refused("shape mismatch", msg.SerializeToString(),
                   "data[0].loss_fn_inputs.weights: shape [2, 3] holds 6 elements, dense data has 8")


def results():
    rng = np.random.default_rng(16)
    # ForwardBackwardOutput: per-datum logprobs and elementwise_loss of different lengths
    lens = [3, 0, 17, 1]
    logprobs = [(-rng.random(n) * 10).astype(np.float32) for n in lens]
    logprobs[0][1] = -np.inf
    losses = [(rng.random(n)).astype(np.float32) for n in lens]
    metrics = {"loss:sum": 12.375, "tokens:sum": 21.0, "ratio:mean": 0.1}
    for with_loss in (True, False):
        inp = {"logprobs": [[to_json_float(v) for v in a] for a in logprobs],
               "elementwise_loss": [[to_json_float(v) for v in a] for a in losses] if with_loss
               else None,
               "metrics": metrics}
        body = run("encode_fb", json.dumps(inp).encode())
        out = response_conv.deserialize_forward_backward_output(body)
        problems = []
        if out.loss_fn_output_type != "ArrayRecord":
            problems.append(f"loss_fn_output_type {out.loss_fn_output_type}")
        if out.metrics != metrics:
            problems.append(f"metrics {out.metrics}")
        if len(out.loss_fn_outputs) != len(lens):
            problems.append(f"{len(out.loss_fn_outputs)} outputs")
        for i, o in enumerate(out.loss_fn_outputs):
            want = {"logprobs": logprobs[i]}
            if with_loss:
                want["elementwise_loss"] = losses[i]
            if set(o) != set(want):
                problems.append(f"output {i} fields {sorted(o)}")
                continue
            for key, arr in want.items():
                td = o[key]
                if td.dtype != "float32" or td.shape != [lens[i]] or \
                        not np.array_equal(td.to_numpy(), arr):
                    problems.append(f"output {i}.{key}: {td.dtype} {td.shape} {td.tolist()}")
        combined = combine_fwd_bwd_output_results([out, out])
        if combined.metrics["loss:sum"] != 2 * metrics["loss:sum"] or \
                len(combined.loss_fn_outputs) != 2 * len(lens):
            problems.append(f"reduced metrics {combined.metrics}")
        check(not problems, f"ForwardBackwardOutput{' with elementwise_loss' if with_loss else ''}"
              f" via response_conv: {len(body)} bytes" + (": " + "; ".join(problems) if problems else ""))
    body = run("encode_fb", json.dumps({"logprobs": [], "elementwise_loss": None,
                                        "metrics": {"loss:sum": 0.0}}).encode())
    out = response_conv.deserialize_forward_backward_output(body)
    check(out.loss_fn_outputs == [] and out.metrics == {"loss:sum": 0.0},
          "ForwardBackwardOutput of no datums")

    # SampleResponse
    seqs = [{"tokens": [5, 151643, 2**31 - 1, 0], "logprobs": [-0.5, -1.25, -30.0, 0.0], "stop_reason": 0},
            {"tokens": [9], "logprobs": [-0.0], "stop_reason": 1},
            {"tokens": rng.integers(0, 150000, size=100).tolist(),
             "logprobs": (-rng.random(100)).astype(np.float32).tolist(), "stop_reason": 1}]
    for prompt in ([None, -1.5, -2.25, -7.0], None):
        body = run("encode_sample", json.dumps({"sequences": seqs, "prompt_logprobs": prompt}).encode())
        out = response_conv.deserialize_sample_response(body)
        problems = []
        if len(out.sequences) != len(seqs):
            problems.append(f"{len(out.sequences)} sequences")
        for i, (s, w) in enumerate(zip(out.sequences, seqs)):
            if s.tokens != w["tokens"]:
                problems.append(f"sequences[{i}].tokens")
            if s.logprobs is None or s.logprobs != [float(np.float32(v)) for v in w["logprobs"]]:
                problems.append(f"sequences[{i}].logprobs {s.logprobs}")
            if s.stop_reason != ("stop", "length")[w["stop_reason"]]:
                problems.append(f"sequences[{i}].stop_reason {s.stop_reason}")
        if out.prompt_logprobs != prompt:
            problems.append(f"prompt_logprobs {out.prompt_logprobs}")
        if out.prompt_cache_hit_tokens != 0 or out.topk_prompt_logprobs is not None:
            problems.append("prompt_cache_hit_tokens / topk")
        check(not problems, f"SampleResponse{' with prompt_logprobs' if prompt else ''} via "
              f"response_conv: {len(body)} bytes" + (": " + "; ".join(problems) if problems else ""))


def main():
    requests()
    results()
    print(f"{failures} failure(s)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

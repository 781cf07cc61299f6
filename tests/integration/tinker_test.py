"""tinker_test.py — chordd's Tinker-compatible API (docs/tinker.md) driven by the official client,
PyPI `tinker` 0.38, unchanged: only TINKER_BASE_URL and TINKER_API_KEY point it at a real chordd.

  - a LoRA training client on a base directory under the models root; get_info names it;
  - forward_backward (cross_entropy, protobuf both ways) returns the model's log-probs of the
    target tokens, equal to transformers' on the same base (the adapter starts as a no-op);
  - ten steps of forward_backward + optim_step drive the loss down; forward() computes without
    training (two calls, same numbers);
  - save_state / save_weights_for_sampler write PEFT adapter directories that peft loads onto the
    base with chord's log-probs (the trained adapter, an independent implementation);
  - bad requests get the errors the client raises: an unknown loss and a malformed datum fail
    their future with the server's message, an unknown base model is refused; the server stays
    up.
"""
import json
import os
import subprocess
import sys

import pytest
import torch
from transformers import AutoModelForCausalLM

sys.path.insert(0, os.path.dirname(__file__))
from chordd_harness import CHORDD, TINY_CONFIG, Chordd  # noqa: E402

BASE_CONFIG = dict(TINY_CONFIG, hidden_size=48, num_hidden_layers=2, num_attention_heads=4,
                   num_key_value_heads=2, intermediate_size=96)


@pytest.fixture(scope="module")
def srv():
    s = Chordd().start()
    cfg = os.path.join(s.tmp, "base.json")
    with open(cfg, "w") as f:
        json.dump(BASE_CONFIG, f)
    s.base = os.path.join(s.models_root, "tbase")
    subprocess.run([CHORDD, "init-model", "--config", cfg, "--seed", "5", "--out", s.base],
                   check=True, capture_output=True)
    os.environ.update(TINKER_BASE_URL=s.url, TINKER_API_KEY="tml-chord-test",
                      TINKER_TELEMETRY="0")
    yield s
    rc = s.stop()
    s.cleanup()
    assert rc == 0, "chordd did not exit cleanly on SIGTERM"


def data(types):
    seqs = [[5, 17, 300, 42, 99, 7, 512, 3, 88, 12], [4, 4, 8, 15, 16, 23, 42]]
    out = []
    for s in seqs:
        w = [0.0] * 3 + [1.0] * (len(s) - 4)  # a "prompt" of 3 tokens takes no loss
        out.append(types.Datum(model_input=types.ModelInput.from_ints(s[:-1]),
                               loss_fn_inputs={"target_tokens": s[1:], "weights": w}))
    return seqs, out


def hf_logprobs(model, seqs):
    out = []
    with torch.no_grad():
        for s in seqs:
            lp = torch.log_softmax(model(torch.tensor([s[:-1]])).logits[0].double(), -1)
            out.append([lp[i, t].item() for i, t in enumerate(s[1:])])
    return out


def worst(a, b):
    return max(abs(x - y) for u, v in zip(a, b) for x, y in zip(u, v))


def test_supervised_loop_with_the_official_client(srv):
    import tinker
    from tinker import types
    sc = tinker.ServiceClient()
    tc = sc.create_lora_training_client(base_model="tbase", rank=8).result()
    info = tc.get_info()
    assert info.model_data.model_name == "tbase" and info.lora_rank == 8, info
    seqs, batch = data(types)
    hf = AutoModelForCausalLM.from_pretrained(srv.base, dtype=torch.float32)
    ref = hf_logprobs(hf, seqs)

    losses = []
    for step in range(10):
        fb = tc.forward_backward(batch, "cross_entropy")
        opt = tc.optim_step(types.AdamParams(learning_rate=2e-2))
        r = fb.result()
        opt.result()
        lp = [x["logprobs"].tolist() for x in r.loss_fn_outputs]
        assert [len(x) for x in lp] == [len(s) - 1 for s in seqs]
        loss = r.metrics["loss:sum"]
        want = -sum(lw * l for x, d in zip(lp, batch)
                    for lw, l in zip(d.loss_fn_inputs["weights"].tolist(), x))
        assert abs(loss - want) <= 1e-4 * max(1.0, abs(want)), (loss, want)
        if step == 0:  # B = 0 and the unembedding's copy is the base's: the base's log-probs
            assert worst(lp, ref) <= 1e-4, worst(lp, ref)
        losses.append(loss)
    print("tinker cross_entropy loss:", " ".join(f"{x:.3f}" for x in losses))
    assert losses[-1] < 0.7 * losses[0], losses

    a = tc.forward(batch, "cross_entropy").result()
    b = tc.forward(batch, "cross_entropy").result()
    la = [x["logprobs"].tolist() for x in a.loss_fn_outputs]
    assert la == [x["logprobs"].tolist() for x in b.loss_fn_outputs]  # forward does not train
    assert worst(la, ref) > 1e-3  # ... but the steps did

    saved = tc.save_state("step10").result()
    assert saved.path == f"tinker://{tc.model_id}/weights/step10", saved
    samp = tc.save_weights_for_sampler("step10").result()
    assert samp.path.endswith("/sampler_weights/step10"), samp
    adir = os.path.join(srv.data_dir, "tinker", tc.model_id, "weights", "step10")
    assert os.path.exists(os.path.join(adir, "optimizer.safetensors"))
    # the saved adapter in peft, on the base: chord's log-probs
    from peft import PeftModel
    pm = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(
        srv.base, dtype=torch.float32), adir)
    assert worst(hf_logprobs(pm, seqs), la) <= 1e-4

    # a training client from the saved state (weights + AdamW): the same log-probs, and the
    # next step of both is the same step, bit for bit
    tc3 = sc.create_training_client_from_state_with_optimizer(saved.path)
    tc3 = tc3.result() if hasattr(tc3, "result") else tc3
    assert tc3.get_info().model_data.model_name == "tbase"
    l3 = [x["logprobs"].tolist() for x in tc3.forward(batch, "cross_entropy").result()
          .loss_fn_outputs]
    assert l3 == la
    for c in (tc, tc3):
        c.forward_backward(batch, "cross_entropy").result()
        c.optim_step(types.AdamParams(learning_rate=2e-2)).result()
    after = [[x["logprobs"].tolist() for x in c.forward(batch, "cross_entropy").result()
              .loss_fn_outputs] for c in (tc, tc3)]
    assert after[0] == after[1] and after[0] != la

    # the RestClient's listings: the run, its checkpoints (read from the data directory)
    rest = sc.create_rest_client()
    run = rest.get_training_run(tc.model_id).result()
    assert run.base_model == "tbase" and run.lora_rank == 8 and run.is_lora, run
    assert run.last_checkpoint.tinker_path == saved.path, run
    cks = rest.list_checkpoints(tc.model_id).result().checkpoints
    assert sorted(c.checkpoint_id for c in cks) == ["sampler_weights/step10", "weights/step10"]
    assert all(c.size_bytes > 0 for c in cks)
    runs = rest.list_training_runs().result().training_runs
    assert tc.model_id in [r.training_run_id for r in runs]

    # bad requests: the client raises with the server's message; the server stays up
    with pytest.raises(Exception, match="dro"):
        tc.forward_backward(batch, "dro").result()
    tc2 = sc.create_lora_training_client(base_model="tbase", rank=4).result()
    bad = types.Datum(model_input=types.ModelInput.from_ints([1, 2, 3]),
                      loss_fn_inputs={"target_tokens": [2, 3], "weights": [1.0, 1.0]})
    with pytest.raises(Exception, match=r"data\[0\]"):
        tc2.forward_backward([bad], "cross_entropy").result()
    with pytest.raises(Exception, match="base_model"):
        sc.create_lora_training_client(base_model="no-such-model", rank=4).result()
    assert srv.get("/healthz").status == 200


def test_rl_loop_sampling_and_parity(srv):
    """The RL path: save_weights_and_get_sampling_client, sample (log-probs equal to transformers'
    on the same weights), importance_sampling on the samples (the parity figure: trainer and
    sampler agree to float round-off), a few steps that move the reward; compute_logprobs;
    a sampling client from a saved checkpoint; ppo, cispo and chord on the same datums."""
    import tinker
    from tinker import types
    sc = tinker.ServiceClient()
    tc = sc.create_lora_training_client(base_model="tbase", rank=8).result()
    hf = AutoModelForCausalLM.from_pretrained(srv.base, dtype=torch.float32)
    prompt = [5, 17, 300, 42]
    params = types.SamplingParams(max_tokens=6, temperature=1.0, stop=[])

    def datums(res, adv):
        out = []
        for s, a in zip(res.sequences, adv):
            full = prompt + list(s.tokens)
            n_p = len(prompt) - 1
            out.append(types.Datum(
                model_input=types.ModelInput.from_ints(full[:-1]),
                loss_fn_inputs={"target_tokens": full[1:],
                                "logprobs": [0.0] * n_p + list(s.logprobs),
                                "advantages": [0.0] * n_p + [a] * len(s.tokens)}))
        return out

    def reward(s):  # the share of tokens from the vocabulary's lower half
        return sum(t < 512 for t in s.tokens) / len(s.tokens)

    rewards, parity_seen = [], 0
    for step in range(12):
        smp = tc.save_weights_and_get_sampling_client().result()
        params = types.SamplingParams(max_tokens=6, temperature=1.0, stop=[], seed=100 + step)
        res = smp.sample(prompt=types.ModelInput.from_ints(prompt), num_samples=8,
                         sampling_params=params).result()
        assert len(res.sequences) == 8 and all(len(s.tokens) == 6 for s in res.sequences)
        assert all(s.stop_reason == "length" for s in res.sequences)
        if step == 0:  # the sampler's log-probs are the model's (transformers, T = 1)
            got = [list(s.logprobs) for s in res.sequences]
            want = hf_logprobs(hf, [prompt + list(s.tokens) for s in res.sequences])
            assert worst([w[len(prompt) - 1:] for w in want], got) <= 1e-4
        r = [reward(s) for s in res.sequences]
        rewards.append(sum(r) / len(r))
        mean = sum(r) / len(r)
        fb = tc.forward_backward(datums(res, [x - mean for x in r]), "importance_sampling")
        tc.optim_step(types.AdamParams(learning_rate=5e-2)).result()
        m = fb.result().metrics
        # one engine: sampler and trainer agree (positions with a non-zero advantage; a group
        # whose rewards are all equal has none)
        assert m.get("parity_max:max", 0.0) <= 1e-4, m
        parity_seen += "parity_max:max" in m
    assert parity_seen >= 6, parity_seen
    print("tinker importance_sampling reward:", " ".join(f"{x:.2f}" for x in rewards))
    assert sum(rewards[-4:]) / 4 > sum(rewards[:4]) / 4 + 0.15, rewards

    # prompt log-probs: transformers' on the trained weights, through a saved checkpoint
    tc.save_weights_for_sampler("rl").result()
    smp2 = sc.create_sampling_client(model_path=f"tinker://{tc.model_id}/sampler_weights/rl")
    smp2 = smp2.result() if hasattr(smp2, "result") else smp2
    assert smp2.get_base_model() == "tbase"
    lp = smp2.compute_logprobs(types.ModelInput.from_ints(prompt + [7, 9])).result()
    from peft import PeftModel
    adir = os.path.join(srv.data_dir, "tinker", tc.model_id, "sampler_weights", "rl")
    pm = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(
        srv.base, dtype=torch.float32), adir)
    want = hf_logprobs(pm, [prompt + [7, 9]])[0]
    assert lp[0] is None and max(abs(a - b) for a, b in zip(lp[1:], want)) <= 1e-4, (lp, want)

    # the other policy losses on the same samples, and chord over a mixed batch
    smp = tc.save_weights_and_get_sampling_client().result()
    res = smp.sample(prompt=types.ModelInput.from_ints(prompt), num_samples=4,
                     sampling_params=params).result()
    batch = datums(res, [1.0, -1.0, 0.5, -0.5])
    for loss, cfg in (("ppo", {"clip_low_threshold": 0.8, "clip_high_threshold": 1.2}),
                      ("cispo", {"clip_low_threshold": 0.8, "clip_high_threshold": 1.2})):
        m = tc.forward_backward(batch, loss, cfg).result().metrics
        assert m["parity_max:max"] <= 1e-4 and "loss:sum" in m, (loss, m)
    expert = types.Datum(model_input=types.ModelInput.from_ints([5, 17, 300, 42, 7]),
                         loss_fn_inputs={"target_tokens": [17, 300, 42, 7, 9],
                                         "weights": [0.0, 0.0, 0.0, 1.0, 1.0]})
    m = tc.forward_backward(batch + [expert], "chord", {"mu": 0.3, "phi": 1}).result().metrics
    assert m["expert_tokens:sum"] == 2 and m["policy_tokens:sum"] == 24, m
    tc.optim_step(types.AdamParams(learning_rate=1e-3)).result()


def test_stop_strings_cut_where_the_text_completes_them(srv):
    """A stop string ends a sample at the first token whose text completes it (that token kept),
    checked with Hugging Face tokenizers on the tokens the server returns (the base's tokenizer:
    chord's embedded default)."""
    import tinker
    from tinker import types
    from tokenizers import Tokenizer
    tok = Tokenizer.from_file(os.path.join(os.path.dirname(__file__), "..", "..", "server",
                                           "model", "default_tokenizer", "tokenizer.json"))
    sc = tinker.ServiceClient()
    tc = sc.create_lora_training_client(base_model="tbase", rank=4).result()
    smp = tc.save_weights_and_get_sampling_client().result()
    for stop in (["e"], ["th", "an"]):
        params = types.SamplingParams(max_tokens=40, temperature=1.0, stop=stop, seed=11)
        res = smp.sample(prompt=types.ModelInput.from_ints([5, 17, 300, 42]), num_samples=8,
                         sampling_params=params).result()
        cut = 0
        for s in res.sequences:
            toks = list(s.tokens)
            text = tok.decode(toks, skip_special_tokens=True)
            before = tok.decode(toks[:-1], skip_special_tokens=True)
            if any(x in text for x in stop):
                assert s.stop_reason == "stop" and not any(x in before for x in stop), (stop, text)
                cut += 1
            else:  # the length, or a stop token (special: no text)
                assert len(toks) == 40 or s.stop_reason == "stop", (stop, text)
        assert cut >= 4, (stop, cut)


def test_state_outlives_a_crash():
    """Sessions, models and futures are in SQLite (docs/tinker.md "State"): listed by
    GET /v1/tinker/sessions; after a SIGKILL and a restart on the same data directory the session
    is finished ("chordd restarted"), and a request that was running fails with the interruption
    when the client asks for it (never 408 for ever), one that finished says its result is gone."""
    import signal
    import time
    from grpc_harness import GrpcChordd, assert_same, stubs
    s = GrpcChordd().start()
    try:
        cfg = os.path.join(s.tmp, "base.json")
        with open(cfg, "w") as f:  # large enough that 32 x 1000 new tokens take seconds
            json.dump(dict(BASE_CONFIG, hidden_size=256, intermediate_size=512,
                           num_hidden_layers=4, max_position_embeddings=2048), f)
        subprocess.run([CHORDD, "init-model", "--config", cfg, "--seed", "5", "--out",
                        os.path.join(s.models_root, "tbase")], check=True, capture_output=True)
        hdr = {"X-API-Key": "tml-chord-test"}

        def call(route, body):
            r = s.post("/api/v1/" + route, body, headers=hdr)
            assert r.status == 200, (route, r)
            return r.json()

        def result(rid, timeout=60):
            end = time.time() + timeout
            while time.time() < end:
                r = s.post("/api/v1/retrieve_future", {"request_id": rid}, headers=hdr)
                if r.status != 408:
                    return r
            raise AssertionError("request %s still pending" % rid)

        sid = call("create_session", {"tags": [], "sdk_version": "0.38.0"})["session_id"]
        # X-Idempotency-Key: a retried call gets the first answer; nothing is created twice
        once = dict(hdr, **{"X-Idempotency-Key": "stainless-python-retry-1"})
        a = s.post("/api/v1/create_session", {"tags": []}, headers=once).json()
        b = s.post("/api/v1/create_session", {"tags": []}, headers=once).json()
        c = s.post("/api/v1/create_session", {"tags": []},
                   headers=dict(hdr, **{"X-Idempotency-Key": "stainless-python-retry-2"})).json()
        assert a == b and a["session_id"] != c["session_id"], (a, b, c)
        for extra in (a, c):
            s.post("/api/v1/sessions/%s/finish" % extra["session_id"], {}, headers=hdr)
        smp = call("create_sampling_session", {"session_id": sid, "base_model": "tbase",
                                               "sampling_session_seq_id": 0})
        sampler = smp["sampling_session_id"]
        prompt = {"chunks": [{"type": "encoded_text", "tokens": [5, 17, 300, 42]}]}
        body = {"sampling_session_id": sampler, "seq_id": 1, "num_samples": 1, "prompt": prompt,
                "sampling_params": {"max_tokens": 2, "stop": []}}
        once = dict(hdr, **{"X-Idempotency-Key": "stainless-python-retry-3"})
        quick = s.post("/api/v1/asample", body, headers=once).json()["request_id"]
        again = s.post("/api/v1/asample", body, headers=once).json()["request_id"]
        assert again == quick
        assert result(quick).status == 200
        slow = call("asample", {"sampling_session_id": sampler, "seq_id": 2, "num_samples": 32,
                                "prompt": prompt,
                                "sampling_params": {"max_tokens": 1000, "stop": []}})["request_id"]
        t_slow = time.time()
        time.sleep(0.5)  # the records are written every 0.1 s
        listed = s.get("/v1/tinker/sessions").json()
        assert listed["total"] == 3, listed  # and the two finished by the idempotency check
        ses = [x for x in listed["items"] if x["id"] == sid][0]
        assert ses["id"] == sid and ses["sdk_version"] == "0.38.0" and ses["finished_at"] is None
        (m,) = ses["models"]
        assert m["kind"] == "sampler" and m["base_model"] == "tbase", m
        assert m["futures"] == {"pending": 1, "done": 2, "failed": 0}, m  # create, quick; slow
        r = s.post("/api/v1/retrieve_future", {"request_id": slow}, headers=hdr)
        assert r.status == 408, r  # still sampling when it dies
        print("killed %.2f s into the sampling" % (time.time() - t_slow))

        s.stop(sig=signal.SIGKILL)
        s.start()
        r = result(slow, timeout=10)
        assert r.status == 200 and "interrupted" in r.json()["error"], r
        r = result(quick, timeout=10)
        assert r.status == 200 and "no longer held" in r.json()["error"], r
        ses = s.get("/v1/tinker/sessions/" + sid).json()
        assert ses["finish_reason"] == "chordd restarted" and ses["finished_at"], ses
        assert ses["models"][0]["ended_at"] and ses["models"][0]["futures"]["pending"] == 0, ses
        assert s.get("/v1/tinker/sessions/ses_nope").status == 404
        # the same over gRPC (REST's nulls are gRPC's empty strings)
        pb = stubs()[0]
        g = s.stub().GetTinkerSession(pb.GetTinkerSessionRequest(id=sid), timeout=10)
        assert_same(ses, g)
        gl = s.stub().ListTinkerSessions(pb.ListTinkerSessionsRequest(), timeout=10)
        mine = [x for x in gl.items if x.id == sid]
        assert gl.total == 3 and mine[0].finish_reason == "chordd restarted" and \
            mine[0].models[0].futures.failed == 1, gl
        r = s.post("/api/v1/retrieve_future", {"request_id": "req_nope"}, headers=hdr)
        assert r.status == 404, r
        assert "interrupted by the last stop" in s.read_log()
    finally:
        s.stop()
        s.cleanup()


def test_sample_requests_queued_together_decode_together(srv):
    """Sample requests that queue up on one sampler decode in one batch (server/tinker/tinker.c
    run_samples; the server logs how many), each with its own prompt, num_samples, max_tokens,
    temperature and seed, and each returns exactly what it returns alone (the tokens; the
    log-probs to fp32 round-off)."""
    import tinker
    from tinker import types
    sc = tinker.ServiceClient()
    smp = sc.create_sampling_client(base_model="tbase")
    smp = smp.result() if hasattr(smp, "result") else smp
    reqs = [(types.ModelInput.from_ints([5 + i, 17, 300 - i, 42]), 1 + i % 3,
             types.SamplingParams(max_tokens=30 + 5 * i, temperature=0.6 + 0.1 * i, stop=[],
                                  seed=1000 + i)) for i in range(8)]
    # a long request first keeps the sampler busy while the eight arrive, so they queue behind
    # it and start together (without it, on a fast machine, each could end before the next came)
    busy = smp.sample(prompt=types.ModelInput.from_ints([7, 8, 9]), num_samples=64,
                      sampling_params=types.SamplingParams(max_tokens=120, temperature=1.0,
                                                           stop=[], seed=1))
    futures = [smp.sample(prompt=p, num_samples=n, sampling_params=sp) for p, n, sp in reqs]
    together = [f.result() for f in futures]
    assert len(busy.result().sequences) == 64
    alone = [smp.sample(prompt=p, num_samples=n, sampling_params=sp).result()
             for p, n, sp in reqs]
    for a, b, (_, n, sp) in zip(alone, together, reqs):
        assert len(a.sequences) == len(b.sequences) == n
        for x, y in zip(a.sequences, b.sequences):
            assert list(x.tokens) == list(y.tokens) and len(x.tokens) == sp.max_tokens
            assert max(abs(p - q) for p, q in zip(x.logprobs, y.logprobs)) <= 1e-5
    log = srv.read_log()
    assert "sample requests decoded together" in log, log[-3000:]

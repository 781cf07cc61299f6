#!/usr/bin/env python3
"""ops_reference.py — the CPU ops of kernels/ops.h (through tests/reference/ops_tool) against
PyTorch fp32:

  matmul      F.linear forward / autograd backward
  rmsnorm     the Hugging Face Llama/Qwen2 RMSNorm formula
  rope        Hugging Face rotate-half apply_rotary_pos_emb
  swiglu      F.silu(gate) * up
  attention   F.scaled_dot_product_attention(is_causal=True) per packed sequence, GQA by
              repeat_interleave of the kv heads; lse against torch.logsumexp
  logprob     log_softmax(logits * inv_temp) gathered at the targets, entropy, and the backward
              of sum(a * logp + b * H)
  adamw       torch.optim.AdamW, 5 steps (weight decay, grad scaling)

relative error = max|chord - torch| / max|torch|: forwards <= 1e-5 (1e-4 attention),
gradients <= 1e-4, AdamW <= 1e-6.
usage: ops_reference.py OPS_TOOL
"""
import os
import subprocess
import sys
import tempfile

import numpy as np
import torch
import torch.nn.functional as F

torch.set_num_threads(2)
torch.manual_seed(0)
TOOL = sys.argv[1]
failures = []


def run(op, d, args, inputs):
    for name, arr in inputs.items():
        arr = arr.detach().numpy() if isinstance(arr, torch.Tensor) else arr
        np.ascontiguousarray(arr).tofile(os.path.join(d, name + ".bin"))
    subprocess.run([TOOL, op, d] + [str(a) for a in args], check=True)


def out(d, name, shape, dtype=np.float32):
    return torch.from_numpy(np.fromfile(os.path.join(d, name + ".out.bin"), dtype=dtype).reshape(shape))


def check(what, got, want, tol):
    want = want.detach().to(torch.float64)
    err = (got.to(torch.float64) - want).abs().max().item() / max(want.abs().max().item(), 1e-30)
    ok = err <= tol
    print(f"{'ok  ' if ok else 'FAIL'} {what:28s} rel err {err:.2e} (tol {tol:.0e})")
    if not ok:
        failures.append(what)


def t_matmul(d):
    N, C, OC = 37, 48, 70
    x = torch.randn(N, C, requires_grad=True)
    w = torch.randn(OC, C, requires_grad=True) * 0.2
    w = w.detach().requires_grad_()
    b = torch.randn(OC, requires_grad=True)
    dout = torch.randn(N, OC)
    y = F.linear(x, w, b)
    y.backward(dout)
    run("matmul", d, [N, C, OC], dict(x=x, w=w, b=b, dout=dout))
    check("matmul out", out(d, "out", (N, OC)), y, 1e-5)
    check("matmul dinp", out(d, "dx", (N, C)), x.grad, 1e-4)
    check("matmul dweight", out(d, "dw", (OC, C)), w.grad, 1e-4)
    check("matmul dbias", out(d, "db", (OC,)), b.grad, 1e-4)


def t_rmsnorm(d):
    N, C, eps = 9, 100, 1e-6
    x = (torch.randn(N, C) * 3).requires_grad_()
    w = (1 + 0.3 * torch.randn(C)).requires_grad_()
    dout = torch.randn(N, C)
    var = x.pow(2).mean(-1, keepdim=True)
    y = w * (x * torch.rsqrt(var + eps))
    y.backward(dout)
    run("rmsnorm", d, [N, C, eps], dict(x=x, w=w, dout=dout))
    check("rmsnorm out", out(d, "out", (N, C)), y, 1e-5)
    check("rmsnorm dinp", out(d, "dx", (N, C)), x.grad, 1e-4)
    check("rmsnorm dweight", out(d, "dw", (C,)), w.grad, 1e-4)


def rotate_half(x):
    h = x.shape[-1] // 2
    return torch.cat((-x[..., h:], x[..., :h]), dim=-1)


def t_rope(d):
    N, H, D = 40, 3, 16
    pos = torch.randint(0, 4000, (N,), dtype=torch.int32)
    inv_freq = 1.0 / (1000000.0 ** (torch.arange(0, D, 2, dtype=torch.int64).float() / D))
    x = torch.randn(N, H, D, requires_grad=True)
    dout = torch.randn(N, H, D)
    freqs = (inv_freq[None, :, None].float() @ pos[None, None, :].float()).transpose(1, 2)[0]
    emb = torch.cat((freqs, freqs), dim=-1)
    cos, sin = emb.cos()[:, None, :], emb.sin()[:, None, :]
    y = x * cos + rotate_half(x) * sin
    y.backward(dout)
    run("rope", d, [N, H, D], dict(x=x, pos=pos.numpy(), inv_freq=inv_freq, dout=dout))
    check("rope out", out(d, "out", (N, H, D)), y, 1e-5)
    check("rope dx", out(d, "dx", (N, H, D)), x.grad, 1e-5)


def t_swiglu(d):
    N, I = 11, 300
    g = (torch.randn(N, I) * 4).requires_grad_()
    u = torch.randn(N, I, requires_grad=True)
    dout = torch.randn(N, I)
    y = F.silu(g) * u
    y.backward(dout)
    run("swiglu", d, [N, I], dict(g=g, u=u, dout=dout))
    check("swiglu out", out(d, "out", (N, I)), y, 1e-5)
    check("swiglu dgate", out(d, "dg", (N, I)), g.grad, 1e-4)
    check("swiglu dup", out(d, "du", (N, I)), u.grad, 1e-4)


def t_attention(d, lens, Hq, Hkv, D):
    S, N = len(lens), sum(lens)
    cu = np.concatenate([[0], np.cumsum(lens)]).astype(np.int32)
    q = torch.randn(N, Hq, D, requires_grad=True)
    k = torch.randn(N, Hkv, D, requires_grad=True)
    v = torch.randn(N, Hkv, D, requires_grad=True)
    dout = torch.randn(N, Hq, D)
    outs, lses = [], []
    for s in range(S):
        a, b = cu[s], cu[s + 1]
        qs = q[a:b].transpose(0, 1)  # (Hq, L, D)
        ks = k[a:b].transpose(0, 1).repeat_interleave(Hq // Hkv, dim=0)
        vs = v[a:b].transpose(0, 1).repeat_interleave(Hq // Hkv, dim=0)
        outs.append(F.scaled_dot_product_attention(qs, ks, vs, is_causal=True).transpose(0, 1))
        sc = (qs @ ks.transpose(1, 2)) / D ** 0.5
        sc = sc.masked_fill(torch.ones(b - a, b - a, dtype=torch.bool).triu(1), float("-inf"))
        lses.append(torch.logsumexp(sc, dim=-1).transpose(0, 1))
    y = torch.cat(outs)
    y.backward(dout)
    tag = f"attention {Hq}/{Hkv} D{D}"
    run("attention", d, [S, N, Hq, Hkv, D], dict(q=q, k=k, v=v, cu=cu, dout=dout))
    check(tag + " out", out(d, "out", (N, Hq, D)), y, 1e-4)
    check(tag + " lse", out(d, "lse", (N, Hq)), torch.cat(lses), 1e-5)
    check(tag + " dq", out(d, "dq", (N, Hq, D)), q.grad, 1e-4)
    check(tag + " dk", out(d, "dk", (N, Hkv, D)), k.grad, 1e-4)
    check(tag + " dv", out(d, "dv", (N, Hkv, D)), v.grad, 1e-4)


def t_logprob(d, N, V, temp):
    logits = (torch.randn(N, V) * 5).requires_grad_()
    targets = torch.randint(0, V, (N,), dtype=torch.int32)
    targets[1] = -1
    a, b = torch.randn(N), torch.randn(N)
    lsm = torch.log_softmax(logits / temp, dim=-1)
    logp = lsm.gather(1, targets.clamp(min=0).long()[:, None])[:, 0] * (targets >= 0)
    ent = -(lsm.exp() * lsm).sum(-1)
    valid = (targets >= 0).float()
    (a * logp + b * ent * valid).sum().backward()
    run("logprob", d, [N, V, 1.0 / temp], dict(logits=logits, targets=targets.numpy(), dlogp=a, dent=b))
    tag = f"logprob V{V} T{temp}"
    check(tag + " logp", out(d, "logp", (N,)), logp, 1e-5)
    check(tag + " entropy", out(d, "ent", (N,)), ent, 1e-5)
    check(tag + " lse", out(d, "lse", (N,)), torch.logsumexp(logits / temp, dim=-1), 1e-6)
    check(tag + " dlogits", out(d, "dlogits", (N, V)), logits.grad, 1e-4)


def t_adamw(d):
    n, steps = 10007, 5
    lr, b1, b2, eps, wd, gs = 3e-3, 0.9, 0.95, 1e-8, 0.1, 0.5
    p = torch.randn(n)
    g = torch.randn(steps, n) * 0.1
    param = torch.nn.Parameter(p.clone())
    opt = torch.optim.AdamW([param], lr=lr, betas=(b1, b2), eps=eps, weight_decay=wd)
    for t in range(steps):
        param.grad = g[t] * gs
        opt.step()
    run("adamw", d, [n, steps, lr, b1, b2, eps, wd, gs], dict(p=p, g=g))
    st = opt.state[param]
    check("adamw param (5 steps)", out(d, "p", (n,)), param.detach(), 1e-6)
    check("adamw exp_avg", out(d, "m", (n,)), st["exp_avg"], 1e-6)
    check("adamw exp_avg_sq", out(d, "v", (n,)), st["exp_avg_sq"], 1e-6)


with tempfile.TemporaryDirectory() as d:
    t_matmul(d)
    t_rmsnorm(d)
    t_rope(d)
    t_swiglu(d)
    t_attention(d, [5, 1, 70, 130], 4, 4, 16)
    t_attention(d, [33, 64, 2], 4, 2, 32)
    t_attention(d, [100, 7], 8, 2, 64)
    t_attention(d, [9, 3], 4, 1, 8)
    t_logprob(d, 6, 1000, 1.0)
    t_logprob(d, 4, 151936, 0.7)
    t_adamw(d)

if failures:
    print("FAILED:", ", ".join(failures))
    sys.exit(1)
print("all ops match PyTorch")

#!/usr/bin/python3
"""cformer's decoder-only model written out in PyTorch: the reference that tests/test_golden.c and
tools/h5_to_torch.py hold the C code to.

Needs Debian's python3-torch, python3-h5py and python3-numpy (bookworm: torch 1.13.1); run it with
/usr/bin/python3 so that they are found.

  torch_gpt.py --config CFG.json --golden OUT.h5 [--seed 0] [--steps 5] [--threads 1]
      writes a golden file for tests/test_golden.c (tests/golden/README.md), on one thread unless
      --threads says otherwise:
        attribute config      the config file's JSON as given (the test resolves the defaults)
        /params/<name>        float32, the initial weights, cformer's names and shapes
        /input/x, /input/y    int32 [batch_size, seq_len]: a batch of random tokens and targets
        /expect/logits        float32 [B, T, vocab_size] on that batch
        /expect/loss          float64 scalar: mean cross-entropy in nats
        /expect/grads/<name>  float32, d loss / d parameter, for every parameter
        /expect/losses        float64 [steps]: the loss before each of `steps` AdamW steps on the
                              same batch (clipped gradient, lr = train.lr constant: no warmup)
  torch_gpt.py --load CKPT.h5 [--golden OUT.h5 ...]
      builds the model from a cformer checkpoint's /config and loads its /params (strict: every
      name and shape must match); prints the parameters, or with --golden writes the golden file
      starting from the checkpoint's weights. load_checkpoint() is what tools/h5_to_torch.py uses.
  torch_gpt.py --config CFG.json --bench [--steps 10] [--threads N]
      times the training step (forward, backward, clipping, AdamW) on one random batch and prints
      BENCH torch_train_step ... step_ms=... tokens_per_s=... peak_rss_mb=...,
      the PyTorch side of `cformer bench CFG.json`.

The model (src/model/decoder.c, src/nn/*.c). Tokens (bytes by default) are embedded by tok_emb
[vocab_size, d_model] and given their positions (model.position: "learned" adds row t of pos_emb
at position t; "sinusoidal" multiplies the embeddings by sqrt(d_model) and adds a fixed sin/cos
table; "none" adds nothing, causal attention alone tells positions apart), then n_layers blocks,
then (pre-norm only) a final norm ln_f; the logits are the hidden states times lm_head^T
[d_model, vocab_size], or times tok_emb^T itself when model.tie_embeddings (the default).
Each block has two sub-layers, causal multi-head self-attention and a two-layer MLP, each with a
residual connection:
    pre-norm  (GPT-2, the default):  x = x + attn(ln1(x));  x = x + mlp(ln2(x))
    post-norm (Vaswani et al.):      x = ln1(x + attn(x));  x = ln2(x + mlp(x))
Parameters are named as in cformer's checkpoints (include/cformer/checkpoint.h), which are
PyTorch's own names for this module tree, and every linear weight is [out, in]:
    tok_emb.weight [V, D]             pos_emb.weight [max_seq_len, D]   (learned positions only)
    blocks.<i>.ln1.weight, .bias [D]  (RMSNorm: weight only; norm parameters ignore model.bias)
    blocks.<i>.attn.qkv.weight [3D, D], .bias [3D]   rows 0..D-1 make q, D..2D-1 k, 2D..3D-1 v;
                                      head h is the columns h*Dh..(h+1)*Dh-1 of each (Dh = D / H)
    blocks.<i>.attn.proj.weight [D, D], .bias [D]
    blocks.<i>.ln2.weight, .bias [D]
    blocks.<i>.mlp.fc.weight [F, D], .bias [F]       F = model.d_ff (0: 4 D)
    blocks.<i>.mlp.proj.weight [D, F], .bias [D]
    ln_f.weight, .bias [D]            (pre-norm only)
    lm_head.weight [V, D]             (untied only; never a bias)
The .bias of every linear layer exists only with model.bias (default true).

Covered: model.arch "decoder" with attention type "full" in every layer; norm layernorm or rmsnorm,
norm_position pre or post, activation gelu (tanh approximation), relu or silu, glu, position
learned, sinusoidal, none, rope (rope_theta, rope_fraction) or alibi, n_kv_heads, qk_norm, tied or
untied embeddings, bias on or off, any sizes, norm_eps, init_std. The block options add
    blocks.<i>.attn.qkv.weight [(H + 2 Hkv) Dh, D]   H query heads' rows, then Hkv key, Hkv value heads
    blocks.<i>.attn.q_norm.weight, .k_norm.weight [Dh]   (qk_norm only)
    blocks.<i>.mlp.up.weight [F, D], .bias [F]       (glu only: the linear branch W3)
Not covered: the other attention types (window, sparse, linear, performer, xl, infini) and the
encoder-decoder. Dropout is left out: evaluation never applies it, and cformer's masks are
counter-based (src/ops/dropout.c) and cannot be reproduced here, so --golden and --bench refuse a
config with a non-zero dropout.

Initialisation follows cformer's rule (decoder.c init_weights): every matrix ~ N(0, init_std^2),
those named *proj.weight (the residual branches' outputs) with std init_std / sqrt(2 n_layers),
biases 0, norm weights 1. The numbers come from torch's generator seeded with --seed, not from
cformer's cf_rng: a golden file carries its initial weights, and cformer loads them. Which numbers
depends on everything that draws from the generator first, including the default initialisation
torch's nn.Embedding and nn.Linear do as they are built: the modules are built in the order
tok_emb, pos_emb, blocks (ln1, attn.qkv, attn.proj, ln2, mlp.fc, mlp.proj), ln_f, lm_head, then
every matrix is drawn again in that order. Keep it so: it is what makes tests/golden/*.h5
reproducible bit for bit (tests/golden/README.md).
"""
import argparse
import json
import math
import os
import resource
import sys
import time

# On a few cores, PyTorch's OpenMP workers and OpenBLAS's threads busy-wait against each other
# between GEMMs; passive waiting keeps --bench honest at 2 threads. Must be set before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

# cformer's defaults for the keys the twin reads (src/core/schema.c cf_config_defaults)
MODEL_DEFAULTS = {
    "arch": "decoder", "vocab_size": 256, "d_model": 256, "n_layers": 4, "n_heads": 4, "d_ff": 0,
    "norm": "layernorm", "norm_position": "pre", "activation": "gelu", "position": "learned",
    "max_seq_len": 256, "dropout": 0.0, "attn_dropout": -1.0, "emb_dropout": -1.0,
    "tie_embeddings": True, "bias": True, "norm_eps": 1e-5, "init_std": 0.02,
    "attention": {"type": "full"},
    "glu": False, "rope_theta": 10000.0, "rope_fraction": 1.0, "n_kv_heads": 0, "qk_norm": False,
}
TRAIN_DEFAULTS = {
    "batch_size": 8, "seq_len": 256, "lr": 3e-4, "weight_decay": 0.1, "beta1": 0.9, "beta2": 0.95,
    "eps": 1e-8, "grad_clip": 1.0,
}
CHOICES = {"norm": ("layernorm", "rmsnorm"), "norm_position": ("pre", "post"),
           "activation": ("gelu", "relu", "silu"), "position": ("learned", "sinusoidal", "none", "rope", "alibi")}


class TwinError(Exception):
    """A config or checkpoint the twin cannot reproduce; the message names the key or dataset."""


def model_config(cfg):
    """cfg["model"] over cformer's defaults, d_ff resolved, checked against what the twin covers."""
    m = dict(MODEL_DEFAULTS)
    m.update(cfg.get("model", {}))
    if m["arch"] != "decoder":
        raise TwinError(f"model.arch is {m['arch']!r}: the twin is the decoder-only model")
    for key, allowed in CHOICES.items():
        if m[key] not in allowed:
            raise TwinError(f"model.{key} is {m[key]!r}: expected one of {', '.join(allowed)}")
    attn = m["attention"]
    for i, a in enumerate(attn if isinstance(attn, list) else [attn]):
        if a.get("type", "full") != "full":
            raise TwinError(f"model.attention{f'[{i}]' if isinstance(attn, list) else ''}.type is "
                            f"{a.get('type')!r}: the twin has full causal attention only")
    if m["d_model"] % m["n_heads"]:
        raise TwinError(f"model.n_heads {m['n_heads']} does not divide model.d_model {m['d_model']}")
    if not m["d_ff"]:
        m["d_ff"] = 4 * m["d_model"]
    if not m["n_kv_heads"]:
        m["n_kv_heads"] = m["n_heads"]
    if m["n_heads"] % m["n_kv_heads"]:
        raise TwinError(f"model.n_kv_heads {m['n_kv_heads']} does not divide model.n_heads {m['n_heads']}")
    # schema.c cf_rope_dims: the fraction of a head's dims, rounded down to whole pairs
    m["rope_dims"] = 2 * int(m["rope_fraction"] * (m["d_model"] // m["n_heads"]) / 2 + 1e-6)
    return m


def train_config(cfg):
    t = dict(TRAIN_DEFAULTS)
    t.update(cfg.get("train", {}))
    return t


def refuse_dropout(m):
    """Training here would draw other dropout masks than cformer: allow only dropout 0."""
    for key in ("dropout", "attn_dropout", "emb_dropout"):
        if m[key] > 0:
            raise TwinError(f"model.{key} is {m[key]}: the twin reproduces cformer only without dropout")


# ---- the modules ---------------------------------------------------------------------------------

class RMSNorm(nn.Module):
    """y = weight * x / sqrt(mean(x^2) + eps) over the last dim (src/ops/norm.c cf_rmsnorm)."""

    def __init__(self, d, eps):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d))

    def forward(self, x):
        return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps))


def make_norm(m):
    """LayerNorm has weight and bias (biased variance, as cf_layernorm); RMSNorm has a weight."""
    d, eps = m["d_model"], m["norm_eps"]
    return nn.LayerNorm(d, eps=eps) if m["norm"] == "layernorm" else RMSNorm(d, eps)


def rope(x, rot, theta):
    """Rotary positions (Su et al. 2021) on x (B, H, T, Dh), src/ops/heads.c cf_rope: the first rot
    dims as pairs (i, i + rot/2), the GPT-NeoX layout, pair i at position t turned by the angle
    t theta^(-2i/rot); angles in float64 as the C code forms them."""
    T, half = x.shape[2], rot // 2
    i = np.arange(half, dtype=np.float64)
    angle = np.arange(T, dtype=np.float64)[:, None] * np.power(float(theta), -2.0 * i / rot)[None, :]
    c = torch.from_numpy(np.cos(angle).astype(np.float32))
    s = torch.from_numpy(np.sin(angle).astype(np.float32))
    a, b, rest = x[..., :half], x[..., half:rot], x[..., rot:]
    return torch.cat([a * c - b * s, a * s + b * c, rest], dim=-1)


def alibi_slopes(H):
    """Press et al. 2022's slopes, src/ops/heads.c cf_alibi_slope: 2^(-8(h+1)/n) for the largest
    power of two n <= H, the other heads taking every other slope of 2n heads."""
    n = 2 ** int(math.floor(math.log2(H)))
    s = [2.0 ** (-8.0 * (h + 1) / n) for h in range(n)]
    return s + [2.0 ** (-8.0 * (2 * j + 1) / (2 * n)) for j in range(H - n)]


class SelfAttention(nn.Module):
    """Causal multi-head attention: one fused projection to q, k, v, softmax(q k^T / sqrt(Dh)) over
    the keys at or before each query, heads concatenated, output projection (src/nn/attention.c and
    the fused kernel of src/ops/attention.c, which computes the same without the T x T matrix).
    With the block options: H query heads and n_kv_heads key/value heads (head h reads shared head
    h // (H / n_kv_heads)), QK-norm (RMSNorm of each query and key head, weights q_norm, k_norm
    [Dh]) before rope, and ALiBi's -slope_h (i - j) added to the scores."""

    sdpa = False   # --sdpa: the same attention through F.scaled_dot_product_attention (PyTorch's fused kernels)

    def __init__(self, m):
        super().__init__()
        d = m["d_model"]
        self.n_heads, self.n_kv = m["n_heads"], m["n_kv_heads"]
        self.dh = d // self.n_heads
        self.rot = m["rope_dims"] if m["position"] == "rope" else 0
        self.theta = m["rope_theta"]
        self.alibi = m["position"] == "alibi"
        self.qkv = nn.Linear(d, (self.n_heads + 2 * self.n_kv) * self.dh, bias=m["bias"])
        if m["qk_norm"]:
            self.q_norm = RMSNorm(self.dh, m["norm_eps"])
            self.k_norm = RMSNorm(self.dh, m["norm_eps"])
        else:
            self.q_norm = self.k_norm = None
        self.proj = nn.Linear(d, d, bias=m["bias"])

    def forward(self, x):
        B, T, D = x.shape
        H, Hkv, Dh = self.n_heads, self.n_kv, self.dh
        q, k, v = self.qkv(x).split([H * Dh, Hkv * Dh, Hkv * Dh], dim=-1)
        q = q.view(B, T, H, Dh).transpose(1, 2)                          # (B, H, T, Dh)
        k, v = (t.view(B, T, Hkv, Dh).transpose(1, 2) for t in (k, v))    # (B, Hkv, T, Dh)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        if self.rot:
            q, k = rope(q, self.rot, self.theta), rope(k, self.rot, self.theta)
        if Hkv != H:
            k, v = k.repeat_interleave(H // Hkv, dim=1), v.repeat_interleave(H // Hkv, dim=1)
        if SelfAttention.sdpa:
            if self.alibi:
                raise TwinError("--sdpa: the twin's fused path has no ALiBi")
            return self.proj(F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(B, T, D))
        scores = (q @ k.transpose(-2, -1)) / math.sqrt(Dh)               # (B, H, T, T)
        if self.alibi:
            dist = (torch.arange(T)[:, None] - torch.arange(T)[None, :]).abs().to(torch.float32)
            scores = scores - torch.tensor(alibi_slopes(H), dtype=torch.float32)[:, None, None] * dist
        future = torch.ones(T, T, dtype=torch.bool, device=x.device).triu(1)
        weights = scores.masked_fill(future, float("-inf")).softmax(dim=-1)
        y = (weights @ v).transpose(1, 2).reshape(B, T, D)               # heads side by side again
        return self.proj(y)


class MLP(nn.Module):
    """proj(act(fc(x))), act = GELU with the tanh approximation, ReLU or SiLU; with model.glu
    proj(act(fc(x)) * up(x)) (Shazeer 2020: GEGLU, SwiGLU) (src/nn/mlp.c)."""

    def __init__(self, m):
        super().__init__()
        self.act = m["activation"]
        self.fc = nn.Linear(m["d_model"], m["d_ff"], bias=m["bias"])
        self.up = nn.Linear(m["d_model"], m["d_ff"], bias=m["bias"]) if m["glu"] else None
        self.proj = nn.Linear(m["d_ff"], m["d_model"], bias=m["bias"])

    def forward(self, x):
        h = self.fc(x)
        if self.act == "relu":
            h = F.relu(h)
        elif self.act == "silu":
            h = F.silu(h)
        else:
            h = F.gelu(h, approximate="tanh")
        return self.proj(h * self.up(x) if self.up is not None else h)


class Block(nn.Module):
    """Attention and MLP sub-layers with residuals, the norms before them (pre) or after the sums
    (post), as src/nn/block.c cf_block_apply."""

    def __init__(self, m):
        super().__init__()
        self.pre = m["norm_position"] == "pre"
        self.ln1 = make_norm(m)
        self.attn = SelfAttention(m)
        self.ln2 = make_norm(m)
        self.mlp = MLP(m)

    def forward(self, x):
        if self.pre:
            x = x + self.attn(self.ln1(x))
            return x + self.mlp(self.ln2(x))
        x = self.ln1(x + self.attn(x))
        return self.ln2(x + self.mlp(x))


def sinusoid_table(n, d):
    """Vaswani et al. 2017, as decoder.c builds it: column i even is sin(p / 10000^(i/d)), column
    i+1 the cos of the same angle; computed in float64, stored as float32."""
    p = np.arange(n, dtype=np.float64)[:, None]
    i = np.arange(0, d, 2, dtype=np.float64)[None, :]
    angle = p / np.power(10000.0, i / d)
    table = np.zeros((n, d), dtype=np.float64)
    table[:, 0::2] = np.sin(angle)
    table[:, 1::2] = np.cos(angle)[:, : d // 2]
    return torch.from_numpy(table.astype(np.float32))


class Decoder(nn.Module):
    """The decoder-only language model of src/model/decoder.c (see the top of this file)."""

    def __init__(self, m):
        super().__init__()
        self.position, self.pre = m["position"], m["norm_position"] == "pre"
        self.max_seq_len = m["max_seq_len"]
        d = m["d_model"]
        self.tok_emb = nn.Embedding(m["vocab_size"], d)
        if self.position == "learned":
            self.pos_emb = nn.Embedding(m["max_seq_len"], d)
        elif self.position == "sinusoidal":
            # a fixed table, not a parameter: checkpoints do not hold it
            self.register_buffer("pos_table", sinusoid_table(m["max_seq_len"], d), persistent=False)
            self.emb_scale = float(np.float32(math.sqrt(d)))   # cformer's sqrtf(D)
        self.blocks = nn.ModuleList(Block(m) for _ in range(m["n_layers"]))
        # a post-norm block already ends in a norm; pre-norm needs a final one
        self.ln_f = make_norm(m) if self.pre else None
        self.lm_head = None if m["tie_embeddings"] else nn.Linear(d, m["vocab_size"], bias=False)
        self.init_weights(m["init_std"], m["n_layers"])

    @torch.no_grad()
    def init_weights(self, std, n_layers):
        """decoder.c init_weights: N(0, std^2) matrices, std / sqrt(2 L) for the residual outputs
        (*proj.weight), zero biases, unit norm weights; in the order of named_parameters()."""
        for name, p in self.named_parameters():
            if name.endswith(".bias"):
                p.zero_()
            elif p.dim() == 1:
                p.fill_(1.0)
            else:
                p.normal_(0.0, std / math.sqrt(2 * n_layers) if name.endswith("proj.weight") else std)

    def forward(self, ids, targets=None):
        """ids (B, T) int64 -> logits (B, T, V), and the mean cross-entropy in nats when targets
        (B, T) are given (None otherwise)."""
        T = ids.shape[1]
        if self.position in ("learned", "sinusoidal") and T > self.max_seq_len:
            raise TwinError(f"{T} tokens exceed model.max_seq_len {self.max_seq_len}")
        h = self.tok_emb(ids)                                              # (B, T, D)
        if self.position == "learned":
            h = h + self.pos_emb(torch.arange(T, device=ids.device))
        elif self.position == "sinusoidal":
            h = h * self.emb_scale + self.pos_table[:T]
        for block in self.blocks:
            h = block(h)
        if self.pre:
            h = self.ln_f(h)
        out = self.tok_emb.weight if self.lm_head is None else self.lm_head.weight
        logits = F.linear(h, out)                                          # (B, T, V)
        if targets is None:
            return logits, None
        # cformer's targets use -1 for "not counted" (cf_cross_entropy's ignore_index)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-1)
        return logits, loss


def build(cfg, seed=0):
    """The model of config cfg (a parsed cformer JSON config), initialised from seed."""
    m = model_config(cfg)
    torch.manual_seed(seed)
    return Decoder(m)


# ---- training: cformer's AdamW step (src/optim/adamw.c) -------------------------------------------

def make_adamw(model, t):
    """AdamW with decoupled weight decay on matrices only (biases, norm weights: none)."""
    matrices = [p for p in model.parameters() if p.dim() >= 2]
    vectors = [p for p in model.parameters() if p.dim() < 2]
    return torch.optim.AdamW([{"params": matrices, "weight_decay": t["weight_decay"]},
                              {"params": vectors, "weight_decay": 0.0}],
                             lr=t["lr"], betas=(t["beta1"], t["beta2"]), eps=t["eps"])


def train_step(model, opt, x, y, grad_clip, bf16=False):
    """forward, backward, clip the global gradient norm to grad_clip (0: no clipping), AdamW;
    returns the loss before the step. bf16: the forward under torch.autocast("cpu", bfloat16), as
    PyTorch's mixed precision runs it (fp32 weights and optimizer, bf16 matrix products)."""
    opt.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        _, loss = model(x, y)
    loss.backward()
    if grad_clip > 0:
        nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    opt.step()
    return loss.item()


# ---- checkpoints ----------------------------------------------------------------------------------

def load_checkpoint(path):
    """(model, cfg, step) from a cformer checkpoint (include/cformer/checkpoint.h, format version 1):
    the model built from /config with the weights of /params. Raises TwinError on anything else."""
    import h5py
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise TwinError(f"{path}: cannot open as HDF5 ({e})")
    with f:
        fmt = f.attrs.get("format")
        fmt = fmt.decode() if isinstance(fmt, bytes) else fmt
        if fmt != "cformer-checkpoint":
            raise TwinError(f"{path}: not a cformer checkpoint (format {fmt!r})")
        if int(f.attrs.get("format_version", -1)) != 1:
            raise TwinError(f"{path}: format_version {f.attrs.get('format_version')} is not supported (1 is)")
        raw = f["config"][()]
        cfg = json.loads(raw.decode() if isinstance(raw, bytes) else raw)
        params = {name: torch.from_numpy(np.array(d[()], dtype=np.float32)) for name, d in f["params"].items()}
        step = int(f.attrs["step"])
    model = build(cfg)
    try:
        model.load_state_dict(params, strict=True)
    except RuntimeError as e:
        raise TwinError(f"{path}: /params do not fit the model of its /config: {str(e).splitlines()[0]} ...")
    return model, cfg, step


# ---- the modes ------------------------------------------------------------------------------------

def write_golden(model, cfg, out, seed, steps):
    """the golden file of tests/test_golden.c (layout at the top of this file)"""
    import h5py
    m, t = model_config(cfg), train_config(cfg)
    refuse_dropout(m)
    B, T, V = t["batch_size"], t["seq_len"], m["vocab_size"]
    batch = torch.Generator().manual_seed(seed + 1)        # the batch has its own generator
    x = torch.randint(0, V, (B, T), generator=batch)
    y = torch.randint(0, V, (B, T), generator=batch)
    with h5py.File(out, "w") as f:
        f.attrs["config"] = json.dumps(cfg)
        for name, p in model.named_parameters():
            f[f"params/{name}"] = p.detach().numpy()
        f["input/x"] = x.to(torch.int32).numpy()
        f["input/y"] = y.to(torch.int32).numpy()
        logits, loss = model(x, y)
        loss.backward()
        f["expect/logits"] = logits.detach().numpy()
        f["expect/loss"] = np.float64(loss.item())
        for name, p in model.named_parameters():
            f[f"expect/grads/{name}"] = p.grad.numpy()
        model.zero_grad(set_to_none=True)
        opt = make_adamw(model, t)
        losses = [train_step(model, opt, x, y, t["grad_clip"]) for _ in range(steps)]
        f["expect/losses"] = np.array(losses, dtype=np.float64)
    print(f"wrote {out}: loss {losses[0] if losses else loss.item():.6f}"
          + (f" -> {losses[-1]:.6f} after {steps - 1} AdamW steps" if steps > 1 else ""))


def bench(model, cfg, steps, bf16=False):
    m, t = model_config(cfg), train_config(cfg)
    refuse_dropout(m)
    B, T, V = t["batch_size"], t["seq_len"], m["vocab_size"]
    opt = make_adamw(model, t)
    x, y = torch.randint(0, V, (B, T)), torch.randint(0, V, (B, T))
    for _ in range(3):                                     # warm up allocator and threads
        train_step(model, opt, x, y, t["grad_clip"], bf16)
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        train_step(model, opt, x, y, t["grad_clip"], bf16)
        times.append(time.perf_counter() - t0)
    med = sorted(times)[len(times) // 2]
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"BENCH torch_train_step B={B} T={T} L={m['n_layers']} C={m['d_model']} threads={torch.get_num_threads()} "
          f"precision={'bf16' if bf16 else 'fp32'} attention={'sdpa' if SelfAttention.sdpa else 'eager'} "
          f"step_ms={med * 1e3:.1f} tokens_per_s={B * T / med:.0f} peak_rss_mb={rss:.0f}")


def describe(model, cfg, step, path):
    n = 0
    for name, p in model.named_parameters():
        print(f"  {name:36s} {list(p.shape)}")
        n += p.numel()
    m = model_config(cfg)
    print(f"{path} (step {step}): {n} parameters; {m['n_layers']} layers, d_model {m['d_model']}, "
          f"{m['n_heads']} heads, {m['norm']} {m['norm_position']}-norm, {m['activation']}, "
          f"{m['position']} positions, {'tied' if m['tie_embeddings'] else 'untied'} embeddings, "
          f"bias {'on' if m['bias'] else 'off'}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--config", help="cformer JSON config: build and initialise its model")
    src.add_argument("--load", metavar="CKPT.h5", help="cformer checkpoint: its config and weights")
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--golden", metavar="OUT.h5", help="write a golden file for tests/test_golden.c")
    mode.add_argument("--bench", action="store_true", help="time the training step")
    ap.add_argument("--sdpa", action="store_true", help="--bench: attention through F.scaled_dot_product_attention")
    ap.add_argument("--bf16", action="store_true", help="--bench: the forward under bfloat16 autocast")
    ap.add_argument("--seed", type=int, default=0, help="initial weights (torch.manual_seed) and, with "
                    "seed + 1, the golden batch")
    ap.add_argument("--steps", type=int, default=None, help="AdamW steps (--golden: 5, --bench: 10)")
    ap.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (default: 1 with --golden, "
                    "else torch's own choice)")
    a = ap.parse_args()
    if a.threads or a.golden:
        # torch splits its reductions between threads, which moves the last bits of the golden
        # values; one thread makes a golden file the same on any machine with the same BLAS
        torch.set_num_threads(a.threads or 1)
    try:
        if a.load:
            model, cfg, step = load_checkpoint(a.load)
        else:
            with open(a.config) as f:
                cfg = json.load(f)
            model, step = build(cfg, a.seed), 0
        if a.golden:
            write_golden(model, cfg, a.golden, a.seed, 5 if a.steps is None else a.steps)
        elif a.bench:
            SelfAttention.sdpa = a.sdpa
            bench(model, cfg, 10 if a.steps is None else a.steps, a.bf16)
        else:
            describe(model, cfg, step, a.load or a.config)
    except TwinError as e:
        print(f"torch_gpt: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()

#!/usr/bin/python3
"""Load a cformer checkpoint into the PyTorch twin and measure bits per byte, for comparison with
`cformer eval CKPT --data FILE [--ctx N] [--stride S]`.

    /usr/bin/python3 tools/h5_to_torch.py CKPT.h5 --data FILE [--ctx N] [--stride S] [--batch B] [--threads N]

The twin is tools/torch_gpt.py next to this file (load_checkpoint): it builds the model of the
checkpoint's /config and loads /params, float32 tensors with PyTorch's names and [out, in] layouts
(include/cformer/checkpoint.h), with load_state_dict(strict=True). It covers cformer's decoder
with full attention (layernorm or rmsnorm, pre- or post-norm, gelu, relu or silu, glu, learned,
sinusoidal, rope, alibi or no positions, shared key/value heads, QK-norm, biases on or off, tied or
untied embeddings) and refuses other checkpoints.

Evaluation follows cf_eval_bpb (src/train/eval.c) exactly: windows of ctx bytes advance by stride;
the first window scores all its positions, each later one only the targets the previous windows
did not reach, so every byte after the first is predicted once. Log-softmax is taken in float64
from float32 logits, as cformer does. Prints
    BENCH torch_eval bpb=... loss=... bytes=... ctx=... stride=... tokens_per_s=...
where loss is the mean in nats per predicted byte. Exit status 2 for bad input.
"""
import argparse, math, os, sys, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def die(msg):
    print(f"h5_to_torch: {msg}", file=sys.stderr)
    sys.exit(2)


def windows(n, ctx, stride):
    """(start, first scored position) of each window, as in cf_eval_bpb"""
    L = min(n - 1, ctx)
    e, prev = L, 0
    while prev < n - 1:
        st = e - L
        yield st, prev - st
        prev = e
        e = min(e + stride, n - 1)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("ckpt")
    ap.add_argument("--data", required=True)
    ap.add_argument("--ctx", type=int, default=0, help="window length (default: the checkpoint's eval.ctx)")
    ap.add_argument("--stride", type=int, default=0, help="window advance (default: eval.stride, or ctx/2 with --ctx)")
    ap.add_argument("--batch", type=int, default=16, help="windows per forward pass")
    ap.add_argument("--threads", type=int, default=0)
    a = ap.parse_args()

    import numpy as np
    import torch
    import torch_gpt
    if a.threads:
        torch.set_num_threads(a.threads)
    try:
        model, cfg, step = torch_gpt.load_checkpoint(a.ckpt)
    except torch_gpt.TwinError as e:
        die(str(e))
    model.eval()

    ev = cfg.get("eval", {})
    ctx = a.ctx or ev.get("ctx") or cfg["train"]["seq_len"]
    stride = a.stride or (ev.get("stride") if not a.ctx or a.ctx == ev.get("ctx") else max(1, ctx // 2))
    # a position table caps the context; rope, alibi and none have none
    if cfg["model"].get("position", "learned") in ("learned", "sinusoidal") and ctx > cfg["model"]["max_seq_len"]:
        die(f"--ctx {ctx} exceeds model.max_seq_len {cfg['model']['max_seq_len']}")
    if not 1 <= stride <= ctx:
        die(f"--stride {stride} must be in 1..ctx {ctx}")
    data = np.fromfile(a.data, dtype=np.uint8)
    if len(data) < 2:
        die(f"{a.data}: need at least 2 bytes, got {len(data)}")

    L = min(len(data) - 1, ctx)
    wins = list(windows(len(data), ctx, stride))
    nats, scored, t0 = 0.0, 0, time.perf_counter()
    with torch.no_grad():
        for i in range(0, len(wins), a.batch):
            part = wins[i:i + a.batch]
            x = torch.from_numpy(np.stack([data[s:s + L] for s, _ in part]).astype(np.int64))
            y = torch.from_numpy(np.stack([data[s + 1:s + L + 1] for s, _ in part]).astype(np.int64))
            logits, _ = model(x)
            logp = logits.double().log_softmax(-1).gather(-1, y[..., None])[..., 0]
            for b, (_, first) in enumerate(part):
                nats -= logp[b, first:].sum().item()
                scored += L - first
    dt = time.perf_counter() - t0
    print(f"checkpoint {a.ckpt} (step {step}) in tools/torch_gpt.py", file=sys.stderr)
    print(f"BENCH torch_eval bpb={nats / scored / math.log(2):.6f} loss={nats / scored:.6f} bytes={scored} "
          f"ctx={ctx} stride={stride} tokens_per_s={scored / dt:.0f}")


if __name__ == "__main__":
    main()

#!/usr/bin/python3
"""Load a cformer checkpoint into the PyTorch twin and measure bits per byte, for comparison with
`cformer eval CKPT --data FILE [--ctx N] [--stride S]`.

    /usr/bin/python3 tools/h5_to_torch.py CKPT.h5 --data FILE [--ctx N] [--stride S] [--twin PATH]
        [--batch B] [--threads N]

The checkpoint is read with h5py alone (DESIGN.md section 6): /config is the resolved JSON config,
/params/<name> are float32 tensors with PyTorch's names and [out, in] layouts, so they load into
the twin's GPT with load_state_dict(strict=True). The twin is ../shared/bench/torch_gpt.py next to
the repository unless --twin says otherwise; it covers cformer's default decoder (GPT-2: pre-norm
LayerNorm, GELU, learned positions, biases, full causal attention, tied or untied embeddings).

Evaluation follows cf_eval_bpb (src/train/eval.c) exactly: windows of ctx bytes advance by stride;
the first window scores all its positions, each later one only the targets the previous windows
did not reach, so every byte after the first is predicted once. Log-softmax is taken in float64
from float32 logits, as cformer does. Prints
    BENCH torch_eval bpb=... loss=... bytes=... ctx=... stride=... tokens_per_s=...
where loss is the mean in nats per predicted byte. Exit status 2 for bad input.
"""
import argparse, importlib.util, json, math, os, sys, time


def die(msg):
    print(f"h5_to_torch: {msg}", file=sys.stderr)
    sys.exit(2)


def load_twin(path):
    if not os.path.isfile(path):
        die(f"{path}: the PyTorch twin is not there (pass --twin PATH/torch_gpt.py)")
    spec = importlib.util.spec_from_file_location("torch_gpt", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def check_twin_arch(cfg):
    """The twin is GPT-2; refuse configs it would silently compute differently."""
    m = cfg["model"]
    want = {"arch": "decoder", "norm": "layernorm", "norm_position": "pre", "activation": "gelu",
            "position": "learned", "bias": True}
    for k, v in want.items():
        if m.get(k) != v:
            die(f"model.{k} is {m.get(k)!r}: the twin only has the default decoder ({k} = {v!r})")
    if abs(m.get("norm_eps", 1e-5) - 1e-5) > 1e-12:
        die(f"model.norm_eps is {m['norm_eps']}: the twin uses 1e-5")
    attn = m.get("attention", {"type": "full"})
    for a in attn if isinstance(attn, list) else [attn]:
        if a.get("type") != "full":
            die(f"model.attention.type {a.get('type')!r}: the twin has full attention only")


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
    ap.add_argument("--twin", default=os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                                   "..", "shared", "bench", "torch_gpt.py"))
    ap.add_argument("--batch", type=int, default=16, help="windows per forward pass")
    ap.add_argument("--threads", type=int, default=0)
    a = ap.parse_args()

    import h5py
    import numpy as np
    try:
        f = h5py.File(a.ckpt, "r")
    except OSError as e:
        die(f"{a.ckpt}: cannot open as HDF5 ({e})")
    with f:
        fmt = f.attrs.get("format")
        fmt = fmt.decode() if isinstance(fmt, bytes) else fmt
        if fmt != "cformer-checkpoint":
            die(f"{a.ckpt}: not a cformer checkpoint (format {fmt!r})")
        if int(f.attrs.get("format_version", -1)) != 1:
            die(f"{a.ckpt}: format_version {f.attrs.get('format_version')} is not supported (this tool reads 1)")
        raw = f["config"][()]
        cfg = json.loads(raw.decode() if isinstance(raw, bytes) else raw)
        params = {n: np.array(d[()], dtype=np.float32) for n, d in f["params"].items()}
        step = int(f.attrs["step"])

    check_twin_arch(cfg)
    twin = load_twin(a.twin)
    import torch
    if a.threads:
        torch.set_num_threads(a.threads)
    model = twin.GPT(**twin.model_cfg(cfg))
    try:
        model.load_state_dict({n: torch.from_numpy(v) for n, v in params.items()}, strict=True)
    except RuntimeError as e:
        die(f"{a.ckpt}: /params do not fit the twin: {str(e).splitlines()[0]} ...")
    model.eval()

    ev = cfg.get("eval", {})
    ctx = a.ctx or ev.get("ctx") or cfg["train"]["seq_len"]
    stride = a.stride or (ev.get("stride") if not a.ctx or a.ctx == ev.get("ctx") else max(1, ctx // 2))
    if ctx > cfg["model"]["max_seq_len"]:
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
    print(f"checkpoint {a.ckpt} (step {step}) in the twin {a.twin}", file=sys.stderr)
    print(f"BENCH torch_eval bpb={nats / scored / math.log(2):.6f} loss={nats / scored:.6f} bytes={scored} "
          f"ctx={ctx} stride={stride} tokens_per_s={scored / dt:.0f}")


if __name__ == "__main__":
    main()

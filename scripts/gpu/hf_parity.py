#!/usr/bin/env python3
"""Parity of pmdrl's model with Hugging Face transformers, logits against logits.

    python3 scripts/gpu/hf_parity.py PATH/TO/pmdrl [--devices cpu,cuda] [--tol 1e-4]

For each case (Llama, Llama tied with llama3 rope_scaling, Qwen2, Qwen3 tied with a head_dim
other than hidden/heads) it builds a tiny random float32 model with transformers (norm
weights and biases randomised too, so that every tensor matters), save_pretrained()s it,
runs `pmdrl logits` on it on each device (a device the binary cannot use -- exit code 3 --
is reported and skipped) and compares with transformers' eager float32 logits on the CPU,
row by row over the valid (unpadded) positions. It then goes the other way: `pmdrl
init-model` writes a model that transformers loads, and the logits must agree again.
Prints the max abs difference per case and device; exits 1 if any exceeds --tol.

Needs python3 with torch, transformers (4.4x or 5.x) and no network. scripts/gpu/run-gpu-check
builds the whole project against pip's CUDA torch on a GPU machine and runs this file on
its `pmdrl`. Ran so on an H200 with torch 2.11 + transformers 5.17: max differences 1.4e-6
to 3.0e-6 on CPU and CUDA for all cases. `--self-test` runs
only the parts that need neither (pmdrl init-model + logits, this file's reader), so the
script can be checked on a machine without them.
"""

import argparse
import inspect
import json
import math
import os
import struct
import subprocess
import sys
import tempfile
from array import array

# Fixed token rows; the second is shorter, so pmdrl right-pads it.
IDS = [[1, 5, 9, 200, 3, 17, 999, 42, 7, 0, 511, 64], [7, 8, 9, 10, 300]]
VOCAB = 1000


def read_safetensors(path):
    """{name: (dtype, shape, values)} for F32 / I64 tensors, with the standard library only."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        begin, end = info["data_offsets"]
        code = {"F32": "f", "I64": "q"}.get(info["dtype"])
        if code is None:
            raise ValueError(f"{path}: {name}: dtype {info['dtype']} not handled here")
        values = array(code)
        values.frombytes(data[begin:end])
        if sys.byteorder != "little":
            values.byteswap()
        out[name] = (info["dtype"], info["shape"], values)
    return out


def pmdrl_logits(binary, model_dir, device, dtype="float32"):
    """Per row, the logits over its valid positions as flat lists [len * vocab]; or None
    when the binary cannot use the device (exit code 3)."""
    ids = ";".join(",".join(str(i) for i in row) for row in IDS)
    out = os.path.join(model_dir, f"logits-{device}-{dtype}.safetensors")
    cmd = [binary, "logits", "--model", model_dir, "--ids", ids, "--out", out,
           "--device", device, "--dtype", dtype]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode == 3:
        print(f"    {device}: skipped ({r.stderr.strip()})")
        return None
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({r.returncode}):\n{r.stdout}{r.stderr}")
    t = read_safetensors(out)
    _, shape, logits = t["logits"]
    _, _, lengths = t["lengths"]
    b, tmax, v = shape
    assert b == len(IDS) and tmax == max(map(len, IDS)), shape
    assert list(lengths) == [len(r) for r in IDS], list(lengths)
    rows = []
    for i, row in enumerate(IDS):
        start = i * tmax * v
        rows.append(list(logits[start:start + len(row) * v]))
    return rows, v


def max_abs_diff(rows_a, rows_b):
    worst = 0.0
    for a, b in zip(rows_a, rows_b, strict=True):
        assert len(a) == len(b), (len(a), len(b))
        for x, y in zip(a, b):
            d = abs(x - y)
            if math.isnan(d):
                return float("inf")
            worst = max(worst, d)
    return worst


def run_binary(binary, *args):
    r = subprocess.run([binary, *args], capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"{binary} {' '.join(args)} failed ({r.returncode}):\n"
                           f"{r.stdout}{r.stderr}")


# ----------------------------------------------------------------- transformers side


def hf_cases():
    import transformers as tf

    common = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=3,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                  rms_norm_eps=1e-6, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    llama3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
              "high_freq_factor": 4.0, "original_max_position_embeddings": 64}
    return [
        ("llama", tf.LlamaConfig, tf.LlamaForCausalLM,
         dict(common, tie_word_embeddings=False), 10000.0, None),
        ("llama-tied-rope-llama3", tf.LlamaConfig, tf.LlamaForCausalLM,
         dict(common, tie_word_embeddings=True), 500000.0, llama3),
        ("qwen2", tf.Qwen2Config, tf.Qwen2ForCausalLM,
         dict(common, tie_word_embeddings=False, use_sliding_window=False), 1000000.0, None),
        ("qwen3-tied", tf.Qwen3Config, tf.Qwen3ForCausalLM,
         dict(common, tie_word_embeddings=True, head_dim=32, use_sliding_window=False),
         1000000.0, None),
    ]


def make_config(config_cls, kwargs, rope_theta, rope_scaling):
    kwargs = dict(kwargs)
    params = inspect.signature(config_cls.__init__).parameters
    if "rope_parameters" in params:  # transformers 5
        rope = dict(rope_scaling or {"rope_type": "default"})
        rope["rope_theta"] = rope_theta
        kwargs["rope_parameters"] = rope
    else:  # transformers 4
        kwargs["rope_theta"] = rope_theta
        if rope_scaling is not None:
            kwargs["rope_scaling"] = dict(rope_scaling)
    config = config_cls(**kwargs)
    config._attn_implementation = "eager"  # the reference: plain float32 softmax attention
    return config


def randomise(model, torch):
    """Every tensor away from its init value, so that a tensor pmdrl dropped would show."""
    g = torch.Generator().manual_seed(1234)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g, dtype=torch.float32)
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.2 * noise)
            else:
                p.copy_(0.1 * noise)


def hf_logits(model, torch):
    """Per row (alone, unpadded), float32 logits on the CPU as flat lists."""
    rows = []
    with torch.no_grad():
        for row in IDS:
            out = model(input_ids=torch.tensor([row], dtype=torch.long))
            rows.append(out.logits[0].float().reshape(-1).tolist())
    return rows


def load_hf(model_dir, torch, transformers):
    try:
        return transformers.AutoModelForCausalLM.from_pretrained(
            model_dir, dtype=torch.float32, attn_implementation="eager")
    except TypeError:  # transformers 4 spells it torch_dtype
        return transformers.AutoModelForCausalLM.from_pretrained(
            model_dir, torch_dtype=torch.float32, attn_implementation="eager")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("binary", help="path to the pmdrl executable")
    ap.add_argument("--devices", default="cpu,cuda", help="comma-separated, default cpu,cuda")
    ap.add_argument("--tol", type=float, default=1e-4, help="max abs difference allowed")
    ap.add_argument("--keep", help="write the models under this directory and keep them")
    ap.add_argument("--self-test", action="store_true",
                    help="check the parts that need no torch/transformers, then exit")
    args = ap.parse_args()
    binary = os.path.abspath(args.binary)
    devices = [d for d in args.devices.split(",") if d]
    root = args.keep or tempfile.mkdtemp(prefix="pmdrl_hf_parity_")
    os.makedirs(root, exist_ok=True)

    if args.self_test:
        return self_test(binary, root, devices, args.tol)

    import torch
    import transformers

    torch.manual_seed(0)
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, "
          f"cuda available: {torch.cuda.is_available()}")
    worst = {}
    failed = False
    for name, config_cls, model_cls, kwargs, theta, rope in hf_cases():
        print(f"{name}:")
        config = make_config(config_cls, kwargs, theta, rope)
        model = model_cls(config).float().eval()
        randomise(model, torch)
        model_dir = os.path.join(root, name)
        model.save_pretrained(model_dir)
        want = hf_logits(model, torch)
        for device in devices:
            got = pmdrl_logits(binary, model_dir, device)
            if got is None:
                continue
            rows, vocab = got
            assert vocab == VOCAB, vocab
            d = max_abs_diff(rows, want)
            worst[(name, device)] = d
            ok = d <= args.tol
            failed |= not ok
            print(f"    {device}: max |pmdrl - transformers| = {d:.3e} "
                  f"{'ok' if ok else 'FAIL'} (tol {args.tol:g})")
        # bf16, for information only: two bf16 implementations legitimately differ more.
        got16 = pmdrl_logits(binary, model_dir, "cpu", "bfloat16")
        if got16 is not None:
            print(f"    cpu bfloat16 (info): max diff to float32 transformers = "
                  f"{max_abs_diff(got16[0], want):.3e}")

    # The other direction: what pmdrl writes, transformers loads and agrees with.
    for arch, extra in (("llama", []), ("qwen2", []), ("qwen3", ["--tie", "--head-dim", "32"])):
        name = f"pmdrl-init-{arch}"
        print(f"{name}:")
        model_dir = os.path.join(root, name)
        run_binary(binary, "init-model", "--arch", arch, "--out", model_dir, "--vocab-size",
                   str(VOCAB), "--hidden-size", "64", "--layers", "2", "--seed", "5", *extra)
        model = load_hf(model_dir, torch, transformers).eval()
        want = hf_logits(model, torch)
        got = pmdrl_logits(binary, model_dir, "cpu")
        d = max_abs_diff(got[0], want)
        worst[(name, "cpu")] = d
        ok = d <= args.tol
        failed |= not ok
        print(f"    cpu: max |pmdrl - transformers| = {d:.3e} {'ok' if ok else 'FAIL'}")

    print("summary:")
    for (name, device), d in worst.items():
        print(f"  {name:28s} {device:5s} {d:.3e}")
    print("FAIL" if failed else "PASS")
    return 1 if failed else 0


def self_test(binary, root, devices, tol):
    """pmdrl init-model + logits on each device, read back with this file's reader: the
    shapes, lengths, finiteness, and CPU/CUDA agreement."""
    model_dir = os.path.join(root, "self-test")
    run_binary(binary, "init-model", "--arch", "qwen3", "--out", model_dir, "--vocab-size",
               str(VOCAB), "--hidden-size", "64", "--layers", "2", "--tie", "--seed", "3")
    results = {}
    for device in devices:
        got = pmdrl_logits(binary, model_dir, device)
        if got is None:
            continue
        rows, vocab = got
        assert vocab == VOCAB, vocab
        assert [len(r) for r in rows] == [len(r) * VOCAB for r in IDS]
        assert all(math.isfinite(x) for r in rows for x in r)
        assert max(abs(x) for r in rows for x in r) > 0
        results[device] = rows
        print(f"self-test: {device}: logits read, {sum(map(len, rows))} values")
    assert "cpu" in results, "the CPU run must work"
    again = pmdrl_logits(binary, model_dir, "cpu")[0]
    assert max_abs_diff(again, results["cpu"]) == 0.0, "not deterministic"
    if "cuda" in results:
        d = max_abs_diff(results["cuda"], results["cpu"])
        print(f"self-test: max |cuda - cpu| = {d:.3e}")
        assert d <= tol, d
    print("self-test: PASS")
    return 0


if __name__ == "__main__":
    sys.exit(main())

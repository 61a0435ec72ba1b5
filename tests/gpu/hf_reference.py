#!/usr/bin/env python3
"""Outside reference for the cuda backend: a small random Llama through Hugging Face transformers.

Builds a small Llama (LlamaConfig: hidden 512, 4 layers, 8 heads of head_dim 64, 2 KV heads,
intermediate 1024, vocab 1024, RoPE with llama3 scaling, max_position_embeddings 4096) with
random weights in float32, casts it to bf16 and saves it with save_pretrained (model.safetensors
+ config.json) into OUT_DIR. Then, from those same bf16 weights upcast to float64 on the CPU,
computes for a few fixed prompts (7, 64 and 300 tokens) the logits of the last prompt position
and 15 further greedy steps (teacher forcing: each step appends the previous step's argmax),
and writes them to OUT_DIR/reference.json for tests/gpu/hf_reference_gpu_test.cc:

  {"format": 1, "config": {...the shape, as HF used it...}, "steps": 16,
   "prompts": [{"tokens": [...], "generated": [16 ids], "logits": [[vocab floats] x 16],
                "top2_gap": [16 floats]}], ...}

generated[k] = argmax(logits[k]); logits[0] is the last prompt position's, logits[k] the
position after generated[k-1]. top2_gap[k] is the reference's top-1 minus top-2 logit (a near
tie there cannot be resolved at bf16 precision: the test reports such steps instead of failing).

Weights are not HF's default init (normal, std 0.02): with it attention is nearly uniform and a
wrong RoPE or mask would hardly change the logits. Here q/k projections make attention scores
of standard deviation ~1.3, other projections are scaled by 1/sqrt(fan_in), norms are random
around 1 (a missing norm weight shows), embeddings are standard normal.

Usage: python3 tests/gpu/hf_reference.py --out DIR   (needs torch and transformers: present on
the lent GPU machines, not on the CPU machines). Exit 0 on success, 1 on failure.
"""
import argparse
import json
import math
import os
import sys

SHAPE = dict(vocab_size=1024, hidden_size=512, intermediate_size=1024, num_hidden_layers=4,
             num_attention_heads=8, num_key_value_heads=2, head_dim=64,
             max_position_embeddings=4096, rms_norm_eps=1e-5, tie_word_embeddings=False,
             bos_token_id=256, eos_token_id=257)
ROPE_THETA = 10000.0
# original_max_position_embeddings 512: wavelengths above 512 positions are divided by the
# factor and those between 128 and 512 blended, so prompts of a few hundred tokens exercise the
# scaling (with Llama 3.1's 8192 the scaled frequencies would hardly turn at these lengths).
ROPE_SCALING = dict(rope_type="llama3", factor=4.0, low_freq_factor=1.0, high_freq_factor=4.0,
                    original_max_position_embeddings=512)
PROMPT_LENGTHS = (7, 64, 300)
STEPS = 16
SEED = 20261128


def llama3_inv_freq(head_dim, theta, s):
    """Llama 3.1's frequency scaling, written out independently of transformers."""
    out = []
    low_wavelen = s["original_max_position_embeddings"] / s["low_freq_factor"]
    high_wavelen = s["original_max_position_embeddings"] / s["high_freq_factor"]
    for i in range(0, head_dim, 2):
        f = 1.0 / theta ** (i / head_dim)
        wavelen = 2 * math.pi / f
        if wavelen < high_wavelen:
            out.append(f)
        elif wavelen > low_wavelen:
            out.append(f / s["factor"])
        else:
            smooth = (s["original_max_position_embeddings"] / wavelen - s["low_freq_factor"]) / (
                s["high_freq_factor"] - s["low_freq_factor"])
            out.append((1 - smooth) * f / s["factor"] + smooth * f)
    return out


def config_forms(transformers):
    """LlamaConfig candidates: transformers 5.x names RoPE settings rope_parameters, 4.x
    rope_theta + rope_scaling. The one whose model really has llama3 frequencies is used."""
    from transformers import LlamaConfig
    v5 = dict(SHAPE, rope_parameters=dict(ROPE_SCALING, rope_theta=ROPE_THETA))
    v4 = dict(SHAPE, rope_theta=ROPE_THETA, rope_scaling=dict(ROPE_SCALING))
    major = int(transformers.__version__.split(".")[0])
    for kwargs in ((v5, v4) if major >= 5 else (v4, v5)):
        try:
            yield LlamaConfig(attn_implementation="eager", **kwargs)
        except TypeError:
            yield LlamaConfig(**kwargs)


def rope_frequency_error(model):
    """Worst relative difference between the model's RoPE frequencies and llama3_inv_freq, or
    None when transformers keeps them somewhere else."""
    rotary = getattr(getattr(model, "model", None), "rotary_emb", None)
    inv = getattr(rotary, "inv_freq", None)
    if inv is None:
        return None
    expected = llama3_inv_freq(SHAPE["head_dim"], ROPE_THETA, ROPE_SCALING)
    got = [float(v) for v in inv]
    if len(got) != len(expected):
        return float("inf")
    return max(abs(a - b) / b for a, b in zip(got, expected))


def init_weights(model, torch, gen):
    """Deterministic weights (see the module docstring)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1:  # RMSNorm weights
                p.copy_(0.8 + 0.4 * torch.rand(p.shape, generator=gen))
            elif "embed_tokens" in name:
                p.copy_(torch.randn(p.shape, generator=gen))
            elif "q_proj" in name or "k_proj" in name:
                # 0.05 · √hidden ≈ 1.1 per q/k element: scores of standard deviation ~1.3,
                # sharp enough that RoPE and the mask matter, mild enough that bf16
                # activations stay within 1e-2 of float64 (0.5–0.7 % in a numpy emulation
                # of the cuda backend's rounding points; 0.08 gave 1.0–1.7 %).
                p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
            else:  # v, o, gate, up, down, lm_head: [out, in]
                p.copy_(torch.randn(p.shape, generator=gen) / math.sqrt(p.shape[1]))


def patch_config_json(path):
    """Adds the top-level rope_theta / rope_scaling that Llama checkpoints carry (and pdpool's
    ModelConfigFromHfConfig reads) when transformers wrote only its newer rope_parameters.
    Returns the keys added."""
    with open(path) as f:
        cfg = json.load(f)
    added = []
    if cfg.get("rope_theta") != ROPE_THETA:
        cfg["rope_theta"] = ROPE_THETA
        added.append("rope_theta")
    if not isinstance(cfg.get("rope_scaling"), dict) or cfg["rope_scaling"].get("rope_type") != "llama3":
        cfg["rope_scaling"] = dict(ROPE_SCALING)
        added.append("rope_scaling")
    if cfg.get("head_dim") != SHAPE["head_dim"]:
        cfg["head_dim"] = SHAPE["head_dim"]
        added.append("head_dim")
    if added:
        with open(path, "w") as f:
            json.dump(cfg, f, indent=2, sort_keys=True)
            f.write("\n")
    return added


def round7(x):
    return float(f"{x:.7g}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, help="directory for the checkpoint and reference.json")
    args = ap.parse_args()

    import torch
    import transformers
    from transformers import LlamaForCausalLM

    os.makedirs(args.out, exist_ok=True)
    model = None
    for cfg in config_forms(transformers):
        candidate = LlamaForCausalLM(cfg).to(torch.float32).eval()
        err = rope_frequency_error(candidate)
        if err is None:
            print("hf_reference: note: rotary_emb.inv_freq not found; RoPE scaling unchecked")
            model = candidate
            break
        if err <= 1e-5:
            model = candidate
            break
        print(f"hf_reference: a LlamaConfig form gave RoPE frequencies off by {err:.3g}; "
              "trying the other")
    if model is None:
        print("hf_reference: transformers did not take the llama3 RoPE scaling in either config "
              "form", file=sys.stderr)
        return 1
    gen = torch.Generator().manual_seed(SEED)
    init_weights(model, torch, gen)
    model = model.to(torch.bfloat16)

    try:
        model.save_pretrained(args.out, safe_serialization=True)
    except TypeError:  # transformers versions where safetensors is the only format
        model.save_pretrained(args.out)
    weights = os.path.join(args.out, "model.safetensors")
    if not os.path.exists(weights):
        print(f"hf_reference: {weights} was not written (sharded?): {os.listdir(args.out)}",
              file=sys.stderr)
        return 1
    patched = patch_config_json(os.path.join(args.out, "config.json"))
    if patched:
        print(f"hf_reference: config.json lacked {patched} (transformers "
              f"{transformers.__version__} writes rope_parameters); added them for pdpool")

    # Reference: the same bf16 weights, upcast exactly, computed in float64 on the CPU. The cast
    # to bf16 also rounded the RoPE frequency buffers (up to 3e-3 relative, 0.2 rad at position
    # 300); put the exact ones back, as pdpool computes them in double.
    ref = model.to(device="cpu", dtype=torch.float64).eval()
    exact = torch.tensor(llama3_inv_freq(SHAPE["head_dim"], ROPE_THETA, ROPE_SCALING),
                         dtype=torch.float64)
    for module in ref.modules():
        if isinstance(getattr(module, "inv_freq", None), torch.Tensor):
            module.inv_freq = exact.clone()
            if isinstance(getattr(module, "original_inv_freq", None), torch.Tensor):
                module.original_inv_freq = exact.clone()
    err = rope_frequency_error(ref)
    if err is not None and err > 1e-12:
        print(f"hf_reference: the float64 reference's RoPE frequencies are off by {err:.3g}",
              file=sys.stderr)
        return 1

    prompts = []
    with torch.no_grad():
        for length in PROMPT_LENGTHS:
            tokens = torch.randint(0, SHAPE["vocab_size"], (length,), generator=gen).tolist()
            seq = list(tokens)
            logits_rows, generated, gaps = [], [], []
            for _ in range(STEPS):
                out = ref(torch.tensor([seq], dtype=torch.long)).logits[0, -1]
                top2 = torch.topk(out, 2).values
                nxt = int(torch.argmax(out))
                logits_rows.append([round7(v) for v in out.tolist()])
                generated.append(nxt)
                gaps.append(float(top2[0] - top2[1]))
                seq.append(nxt)
            if any(not math.isfinite(v) for row in logits_rows for v in row):
                print("hf_reference: non-finite reference logits", file=sys.stderr)
                return 1
            prompts.append(dict(tokens=tokens, generated=generated, logits=logits_rows,
                                top2_gap=gaps))
            print(f"hf_reference: prompt {length} tokens -> {generated} "
                  f"(smallest top-2 gap {min(gaps):.4f})")

    doc = dict(
        format=1,
        transformers_version=transformers.__version__,
        torch_version=torch.__version__,
        dtype="weights bf16 (model.safetensors); reference in float64 from those weights",
        config=dict(SHAPE, rope_theta=ROPE_THETA, rope_scaling=ROPE_SCALING,
                    num_layers=SHAPE["num_hidden_layers"], num_heads=SHAPE["num_attention_heads"],
                    num_kv_heads=SHAPE["num_key_value_heads"]),
        config_json_patched=patched,
        steps=STEPS,
        prompts=prompts,
    )
    with open(os.path.join(args.out, "reference.json"), "w") as f:
        json.dump(doc, f)
    print(f"hf_reference: wrote {args.out}/model.safetensors, config.json, reference.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())

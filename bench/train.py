"""Training-step speed of the LLM part (the bulk of OSUM's training cost): ours vs transformers + peft, CPU.

Both models get the same random Qwen2-0.5B-sized weights (hidden 896, 14 heads, 2 KV heads, vocab 151936; the
layer count is a flag, default 4 of the real 24 to keep the run short) with LoRA r=8, alpha 32, dropout 0.1 on
q/k/v/o/gate/down, and the same batch: inputs_embeds (B, L, 896) standing in for [prompt, speech, labels] and
targets on the last `--label-tokens` positions only, as in OSUM. One step = forward, loss, backward, AdamW on the
LoRA parameters. Ours computes logits only where there are targets (as `OSUM.loss` does); transformers computes
them for every position. The two alternate step by step, so a change of load hits both alike; we report medians.

    python bench/train.py [--layers 4] [--batch 2] [--length 256] [--steps 6] [--threads N]
"""

import argparse
import json
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
from hf_qwen2 import peft_twin  # noqa: E402
from osum_min.model.qwen2 import LLM_PRESETS  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--length", type=int, default=256)
    parser.add_argument("--label-tokens", type=int, default=32)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config = replace(
        LLM_PRESETS["qwen2-0.5b"],
        layers=args.layers,
        lora_rank=8,
        lora_alpha=32.0,
        lora_dropout=0.1,
    )
    hf, ours = peft_twin(config, lora_b_std=0.0)
    hf.train(), ours.train()
    for name, parameter in ours.named_parameters():
        parameter.requires_grad_(".lora_" in name)
    generator = torch.Generator().manual_seed(0)
    inputs_embeds = (
        torch.randn(args.batch, args.length, config.dim, generator=generator) * 0.02
    )
    targets = torch.full((args.batch, args.length), -100)
    targets[:, -args.label_tokens :] = torch.randint(
        0, config.vocab_size, (args.batch, args.label_tokens), generator=generator
    )
    predicts = targets[:, 1:] != -100

    def hf_step():
        return hf(inputs_embeds=inputs_embeds, labels=targets).loss

    def our_step():
        hidden = ours.forward_hidden(inputs_embeds=inputs_embeds)  # (B, L, H)
        logits = ours.lm_head(hidden[:, :-1][predicts]).float()  # (N_label_tokens, V)
        return F.cross_entropy(logits, targets[:, 1:][predicts])

    runs = {}
    for name, model, step in (
        ("transformers+peft", hf, hf_step),
        ("ours", ours, our_step),
    ):
        optimizer = torch.optim.AdamW(
            [p for p in model.parameters() if p.requires_grad],
            lr=5e-5,
            betas=(0.9, 0.99),
            eps=1e-6,
            weight_decay=0.01,
        )
        runs[name] = {"step": step, "optimizer": optimizer, "times": [], "losses": []}
    for index in range(args.steps + 1):  # the first step of each is a warm-up
        for name, run in runs.items():
            start = time.perf_counter()
            loss = run["step"]()
            loss.backward()
            run["optimizer"].step()
            run["optimizer"].zero_grad(set_to_none=True)
            if index:
                run["times"].append(time.perf_counter() - start)
            run["losses"].append(loss.item())
    tokens = args.batch * args.length
    figures = {
        "layers": args.layers,
        "batch": args.batch,
        "length": args.length,
        "threads": args.threads,
        "first_loss_ours": runs["ours"]["losses"][0],
        "first_loss_transformers_peft": runs["transformers+peft"]["losses"][0],
    }
    for name, run in runs.items():
        seconds = statistics.median(run["times"])
        key = "ours" if name == "ours" else "transformers_peft"
        figures[f"{key}_steps_per_s"] = round(1 / seconds, 3)
        figures[f"{key}_tokens_per_s"] = round(tokens / seconds, 1)
        print(
            f"{name:>18}: {1 / seconds:.3f} steps/s, {tokens / seconds:.0f} tokens/s (median of {args.steps}), "
            f"first loss {run['losses'][0]:.5f}"
        )
    figures["speedup_ours_vs_transformers_peft"] = round(
        figures["ours_steps_per_s"] / figures["transformers_peft_steps_per_s"], 3
    )
    print(
        f"ours / transformers+peft: {figures['speedup_ours_vs_transformers_peft']:.2f}x"
    )
    print(json.dumps(figures))


if __name__ == "__main__":
    main()

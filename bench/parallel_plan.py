"""What each GPU holds and sends for the flagship releases under the layouts a user would choose.

Computed, not measured: parameter counts from the real configs (shared/specs/bailing_moe_v2.md
section 6; Ling-flash-2.0's total comes out at 102.86B against the 102.89B published), split as our
parallel layers split them (engine/parallel): attention by heads (KV heads replicated when fewer
than ranks), dense MLP / shared / routed experts by width (TP) or by expert (EP) - the same bytes
per GPU either way -, embedding and lm_head by vocab rows; norms and routers (fp32) replicated.
FP8 = the block-FP8 releases' layout: projections 1 byte + one fp32 scale per 128x128 block,
everything else bf16. KV cache bf16. Traffic per token: one all-reduce of the hidden row (bf16)
for the embedding and two per layer (attention output, MLP / MoE block); a ring all-reduce sends
2(N-1)/N of it per rank. Ming-flash-omni's language model is Ling-flash-2.0's; its encoders
(Qwen2.5-VL ViT ~0.67B, Whisper encoder ~0.64B params) stay replicated on every rank.
"""

from __future__ import annotations

from dataclasses import dataclass

GPU_BYTES = 141e9  # H200
USABLE = 0.90  # of GPU memory for weights + KV (activations, CUDA context, fragmentation: the rest)
GB = 1e9


@dataclass(frozen=True)
class LMShape:
    name: str
    layers: int
    hidden: int
    dense_width: int
    heads: int
    kv_heads: int
    head_dim: int
    experts: int
    expert_width: int
    shared_width: int
    dense_layers: int
    vocab: int = 157_184
    replicated_params: float = 0.0  # encoders that every rank keeps whole


LING_FLASH = LMShape("Ling-flash-2.0", 32, 4096, 9216, 32, 4, 128, 256, 1024, 1024, 1)
LING_1T = LMShape("Ling-1T", 80, 8192, 18432, 64, 8, 128, 256, 2048, 2048, 4)
MING_FLASH = LMShape(
    "Ming-flash-omni", 32, 4096, 9216, 32, 4, 128, 256, 1024, 1024, 1, replicated_params=1.31e9
)


def params(m: LMShape) -> dict[str, float]:
    """Parameter counts by what splits how."""
    attn = m.layers * ((m.heads + 2 * m.kv_heads) * m.head_dim * m.hidden + m.heads * m.head_dim * m.hidden)
    moe_layers = m.layers - m.dense_layers
    return {
        "attention": attn,
        "mlp": m.dense_layers * 3 * m.hidden * m.dense_width + moe_layers * 3 * m.hidden * m.shared_width,
        "experts": moe_layers * m.experts * 3 * m.hidden * m.expert_width,
        "vocab": 2 * m.vocab * m.hidden,
        "router": moe_layers * m.experts * (m.hidden + 1),
        "norms": m.layers * (2 * m.hidden + 2 * m.head_dim) + m.hidden,
    }


def total_params(m: LMShape) -> float:
    return sum(params(m).values())


def weights_per_gpu(m: LMShape, tp: int, fp8: bool) -> float:
    p = params(m)
    q = m.heads // tp
    kv = max(1, m.kv_heads // tp)
    attn = m.layers * ((q + 2 * kv) * m.head_dim * m.hidden + q * m.head_dim * m.hidden)
    projections = attn + (p["mlp"] + p["experts"]) / tp
    proj_bytes = projections * (1 + 4 / (128 * 128)) if fp8 else projections * 2
    return proj_bytes + p["vocab"] / tp * 2 + p["router"] * 4 + p["norms"] * 2 + m.replicated_params * 2


def kv_bytes_per_token(m: LMShape, tp: int) -> float:
    return 2 * m.layers * max(1, m.kv_heads // tp) * m.head_dim * 2


def allreduce_bytes_per_token(m: LMShape, tp: int) -> tuple[float, float]:
    """(payload, ring bytes sent per rank) per token."""
    payload = (1 + 2 * m.layers) * m.hidden * 2
    return payload, payload * 2 * (tp - 1) / tp


LAYOUTS = [
    (LING_FLASH, "1x H200", 1, False, False),
    (LING_FLASH, "1x H200", 1, False, True),
    (LING_FLASH, "2x H200", 2, False, False),
    (LING_FLASH, "2x H200", 2, True, False),
    (LING_FLASH, "4x H200", 4, True, False),
    (MING_FLASH, "2x H200", 2, False, False),
    (LING_1T, "8x H200", 8, True, False),
    (LING_1T, "8x H200", 8, True, True),
    (LING_1T, "2 nodes x 8 H200", 16, True, False),
    (LING_1T, "2 nodes x 8 H200", 16, True, True),
]


def plan_table() -> dict:
    rows = []
    for m, gpus, tp, ep, fp8 in LAYOUTS:
        w = weights_per_gpu(m, tp, fp8)
        kv = kv_bytes_per_token(m, tp)
        free = GPU_BYTES * USABLE - w
        payload, sent = allreduce_bytes_per_token(m, tp)
        rows.append(
            {
                "model": m.name,
                "params_b": total_params(m) / 1e9 + m.replicated_params / 1e9,
                "gpus": gpus,
                "tp": tp,
                "ep": ep,
                "dtype": "fp8" if fp8 else "bf16",
                "weights_gb_per_gpu": w / GB,
                "kv_kb_per_token_per_gpu": kv / 1024,
                "kv_tokens_that_fit": max(0, int(free // kv)),
                "allreduce_payload_kb_per_token": payload / 1024 if tp > 1 else 0.0,
                "ring_kb_sent_per_rank_per_token": sent / 1024,
            }
        )
    lines = [
        "| model (params) | GPUs | layout | weights | weights / GPU (GB) | KV / token / GPU (KB) "
        "| KV tokens in the rest of 90% of 141 GB | all-reduce payload / token (KB) "
        "| ring bytes sent / rank / token (KB) |",
        "|---|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        layout = f"TP={r['tp']}" + ("+EP" if r["ep"] else "")
        fit = f"{r['kv_tokens_that_fit']:,}" if r["kv_tokens_that_fit"] else "does not fit"
        lines.append(
            f"| {r['model']} ({r['params_b']:.1f}B) | {r['gpus']} | {layout} | {r['dtype']} | "
            f"{r['weights_gb_per_gpu']:.1f} | {r['kv_kb_per_token_per_gpu']:.0f} | {fit} | "
            f"{r['allreduce_payload_kb_per_token']:.0f} | {r['ring_kb_sent_per_rank_per_token']:.0f} |"
        )
    return {"rows": rows, "markdown": "\n".join(lines)}


if __name__ == "__main__":
    print(plan_table()["markdown"])

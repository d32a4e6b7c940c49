"""Tables: efficiency (the paper's Table IV) and prompt interpretation (beyond the paper)."""
from __future__ import annotations

import time
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from ..models.sci import ModelSpec, SCIModel

ATTRIBUTES = [
    "a person with long hair", "a person with short hair", "a bald person", "a person wearing glasses",
    "a person carrying a bag", "a person carrying a backpack", "a person wearing shoes", "a tall person",
    "a short person", "a person with dark skin", "a person with light skin", "a person wearing a skirt",
    "a person wearing shorts", "a person wearing a striped shirt",
]


def _sdpa_cpu(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


# torch counts fused attention on GPU kernels only; the CPU kernel (attention pooling, ViT blocks) needs this
FLOP_MAPPING = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _sdpa_cpu}


def count_flops(fn, *args) -> int:
    """FLOPs (2 x multiply-adds) of ``fn(*args)``, attention included."""
    with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=FLOP_MAPPING) as fc:
        fn(*args)
    return fc.get_total_flops()


def _params(*mods) -> int:
    return sum(p.numel() for m in mods if m is not None for p in m.parameters())


def efficiency_table(spec: ModelSpec, device: torch.device | str = "cpu", batch: int = 16, iters: int = 3) -> dict[str, Any]:
    """Per variant (baseline: no SSE/SIM, SCI): image-side parameters and GFLOPs per image at the spec's
    input size, the text side separately (it runs once to make the prototypes), and measured images/s."""
    device = torch.device(device)
    rows = {}
    for name, sse, sim in (("baseline", False, False), ("SCI", True, True)):
        s = ModelSpec(**{**spec.to_dict(), "sse": sse, "sim": sim})
        torch.manual_seed(0)
        m = SCIModel(s).to(device).eval()
        x = torch.randn(1, 3, s.height, s.width, device=device)
        img_flops = count_flops(m.embed_tensor, x)
        text_flops = count_flops(lambda: m.compute_prototypes(torch.ones(s.num_pids, s.num_clothes, dtype=torch.bool)))
        xb = torch.randn(batch, 3, s.height, s.width, device=device)
        with torch.no_grad():
            m.embed_tensor(xb)
            if device.type == "cuda":
                torch.cuda.synchronize()
            t = time.perf_counter()
            for _ in range(iters):
                m.embed_tensor(xb)
            if device.type == "cuda":
                torch.cuda.synchronize()
        rows[name] = {
            "image_params_M": _params(m.visual, m.sim, m.bottleneck, m.bottleneck_proj) / 1e6,
            "image_GFLOPs": img_flops / 1e9,
            "text_params_M": _params(m.text, m.token_embedding, m.id_prompts, m.clothes_prompts) / 1e6,
            "text_GFLOPs_once": text_flops / 1e9,
            "infer_img_per_s": batch * iters / (time.perf_counter() - t),
        }
    return {"arch": spec.arch, "input": f"{spec.height}x{spec.width}", "num_pids": spec.num_pids,
            "num_clothes": spec.num_clothes, "device": str(device), "rows": rows}


def format_efficiency(t: dict[str, Any]) -> str:
    lines = [f"Efficiency of {t['arch']} at {t['input']} on {t['device']} ({t['num_pids']} identities, "
             f"{t['num_clothes']} clothes prompts)", "",
             "| model | image params (M) | image GFLOPs | text params (M) | text GFLOPs (once) | inference img/s |",
             "|---|---|---|---|---|---|"]
    for k, r in t["rows"].items():
        lines.append(f"| {k} | {r['image_params_M']:.2f} | {r['image_GFLOPs']:.3f} | {r['text_params_M']:.2f} | "
                     f"{r['text_GFLOPs_once']:.3f} | {r['infer_img_per_s']:.1f} |")
    return "\n".join(lines)


@torch.no_grad()
def prompt_interpretation(model: SCIModel, topk: int = 5, attributes: list[str] | None = None,
                          max_ids: int = 20) -> dict[str, Any]:
    """Nearest vocabulary tokens of each learned prompt vector, and cosine of each identity's
    prototype (T_ort, or T_id without SSE) to hand-written attribute prompts."""
    import open_clip

    tok = open_clip.get_tokenizer("RN50-quickgelu")
    vocab = torch.nn.functional.normalize(model.token_embedding.weight.float(), dim=1)

    def nearest(ctx: torch.Tensor) -> list[list[str]]:
        sims = torch.nn.functional.normalize(ctx.float(), dim=-1) @ vocab.T  # n_ctx x V
        return [[tok.decoder[int(i)].replace("</w>", "") for i in row.topk(topk).indices] for row in sims]

    id_tokens = {int(k): nearest(model.id_prompts.ctx[k]) for k in range(min(max_ids, model.spec.num_pids))}
    clo_tokens = ({int(k): nearest(model.clothes_prompts.ctx[k]) for k in range(min(max_ids, model.spec.num_clothes))}
                  if model.clothes_prompts is not None else {})
    attributes = attributes or ATTRIBUTES
    from .mechanism import encode_phrases
    attr = encode_phrases(model, attributes)
    protos = torch.nn.functional.normalize(model.prototypes.float(), dim=1)
    sims = (protos[:max_ids] @ attr.T).cpu()
    return {"id_prompt_tokens": id_tokens, "clothes_prompt_tokens": clo_tokens, "attributes": attributes,
            "prototype_attribute_cosine": sims.tolist()}


def format_prompts(p: dict[str, Any], max_rows: int = 10) -> str:
    lines = ["Nearest vocabulary tokens of the learned identity prompt vectors X1..XM:", "",
             "| identity | " + " | ".join(f"X{i + 1}" for i in range(len(next(iter(p['id_prompt_tokens'].values()))))) + " |",
             "|---|" + "---|" * len(next(iter(p["id_prompt_tokens"].values())))]
    for k, toks in list(p["id_prompt_tokens"].items())[:max_rows]:
        lines.append(f"| {k} | " + " | ".join(", ".join(t[:3]) for t in toks) + " |")
    lines += ["", "Cosine of each identity's prototype to attribute prompts:", "",
              "| identity | " + " | ".join(a.replace("a person ", "").replace("a ", "") for a in p["attributes"]) + " |",
              "|---|" + "---|" * len(p["attributes"])]
    for k, row in enumerate(p["prototype_attribute_cosine"][:max_rows]):
        lines.append(f"| {k} | " + " | ".join(f"{v:+.2f}" for v in row) + " |")
    return "\n".join(lines)

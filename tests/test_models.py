"""Backbone surgery, weights loading and the text side, on random-init models (nothing downloaded)."""
import open_clip
import pytest
import torch
from safetensors.torch import save_file

from scireid.errors import WeightsError
from scireid.models import list_models
from scireid.models.backbone import ReIDVisual, attention_pool, build_clip, resize_pos_embed
from scireid.models.sci import ModelSpec, SCIModel, build_model
from scireid.models.weights import load_clip_weights, read_state_dict


def test_registry_lists_tiny_and_real():
    assert {"tiny-rn", "tiny-vit", "RN50-quickgelu", "ViT-B-16-quickgelu"} <= set(list_models())


@pytest.mark.parametrize("arch,act", [("RN50-quickgelu", "QuickGELU"), ("RN50", "GELU"),
                                      ("ViT-B-16-quickgelu", "QuickGELU")])
def test_activation_class(arch, act):
    clip = build_clip(arch)
    assert type(clip.transformer.resblocks[0].mlp.gelu).__name__ == act
    if "ViT" in arch:
        assert type(clip.visual.transformer.resblocks[0].mlp.gelu).__name__ == act


def test_resize_pos_embed_keeps_class_token_and_is_bilinear():
    pos = torch.arange(1 + 4, dtype=torch.float32)[:, None].repeat(1, 2)  # grid [[1,2],[3,4]]
    out = resize_pos_embed(pos, (4, 2))
    assert out.shape == (9, 2) and out[0, 0] == 0
    ref = torch.nn.functional.interpolate(torch.tensor([[[[1., 2.], [3., 4.]]]]), size=(4, 2), mode="bilinear",
                                          align_corners=False)
    assert torch.allclose(out[1:, 0], ref.flatten())


@pytest.mark.parametrize("arch", ["RN50-quickgelu", "ViT-B-16-quickgelu"])
def test_openclip_state_dict_loads_and_forward_matches(tmp_path, arch):
    torch.manual_seed(0)
    ref = open_clip.create_model(arch, pretrained=None).eval()
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(tmp_path / "w.safetensors"))
    ours = build_clip(arch)
    load_clip_weights(ours, str(tmp_path / "w.safetensors"), arch)
    vis = ReIDVisual(ours.visual, 224, 224, surgery=False).eval()
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        expected = ref.encode_image(x)
        got = vis(x)["p"]
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("arch,hw", [("tiny-rn", (64, 32)), ("RN50-quickgelu", (256, 128))])
def test_attention_pool_equals_open_clip_s_forward_and_gradients(arch, hw):
    # the re-associated pooling against open_clip's own AttentionPool2d.forward (all tokens projected), float64,
    # on the ReID grid (non-square, resized positional embedding): output and every gradient
    torch.manual_seed(0)
    ap = ReIDVisual(build_clip(arch).visual, *hw).visual.attnpool.double()
    with torch.no_grad():
        for prm in ap.parameters():  # biases are zero at init: give every term of the identity something to do
            prm.normal_(0, prm.shape[-1] ** -0.5)
    x = torch.randn(3, ap.k_proj.in_features, hw[0] // 16, hw[1] // 16, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, ap.c_proj.out_features, dtype=torch.float64)
    grads = []
    for fn in (ap, lambda f: attention_pool(ap, f)):
        out = fn(x)
        g = torch.autograd.grad((out * w).sum(), [x, *ap.parameters()])  # every parameter used (DDP needs it)
        grads.append((out, *g))
    names = ["out", "x", *(n for n, _ in ap.named_parameters())]
    for name, a, b in zip(names, *grads):
        torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-12, msg=name)  # k_proj.bias: ~0 in both (it cancels)


def test_attention_pool_runs_under_bf16_autocast_like_open_clip_s():
    # the GPU recipe trains under autocast: mixed dtypes (bf16 products, an fp32 bias term, fp32 softmax) must work
    torch.manual_seed(0)
    ap = ReIDVisual(build_clip("tiny-rn").visual, 64, 32).visual.attnpool
    x = torch.randn(4, ap.k_proj.in_features, 4, 2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ref, ours = ap(x), attention_pool(ap, x)
    assert ours.dtype == ref.dtype == torch.bfloat16
    torch.testing.assert_close(ours.float(), ref.float(), rtol=0.05, atol=0.02)


def test_rn50_reid_shapes_and_param_count():
    torch.manual_seed(0)
    m = SCIModel(ModelSpec("RN50-quickgelu", num_pids=77, num_clothes=256, height=256, width=128)).eval()
    x = torch.randn(2, 3, 256, 128)
    with torch.no_grad():
        mid, fmap, _ = m.visual.trunk(x)
        feat = m.embed_tensor(x)
    assert fmap.shape == (2, 2048, 16, 8) and mid.shape == (2, 1024)
    assert m.visual.visual.attnpool.positional_embedding.shape == (16 * 8 + 1, 2048)
    assert feat.shape == (2, 3072)
    torch.testing.assert_close(feat.norm(dim=1), torch.ones(2))
    n_visual = sum(p.numel() for p in m.visual.parameters())
    n_sim = sum(p.numel() for p in m.sim.parameters())
    assert n_visual == 38_316_896 + (129 - 50) * 2048  # open_clip RN50 visual + the resized pos-embed rows
    # non-local theta/phi/g + W_z conv + W_z BN; cross-attention W_q, W_k (no bias), W_v; gamma
    assert n_sim == 3 * (2048 * 1024 + 1024) + (1024 * 2048 + 2048) + 2 * 2048 + (1024 * 1024 + 1024) + 2048 * 1024 + (2048 * 1024 + 1024) + 1


def test_surgery_only_resizes_and_changes_stride():
    clip = build_clip("tiny-rn")
    before = {k: v.clone() for k, v in clip.visual.state_dict().items()}
    vis = ReIDVisual(clip.visual, 128, 64)
    after = vis.visual.state_dict()
    assert before.keys() == after.keys()
    for k in before:
        if "positional_embedding" not in k:
            assert torch.equal(before[k], after[k]), k
    assert vis.grid == (8, 4)
    with pytest.raises(ValueError, match="multiple of 32"):
        ReIDVisual(build_clip("tiny-rn").visual, 100, 64)


def test_vit_shapes():
    m = SCIModel(ModelSpec("tiny-vit", 5, 7, 128, 64)).eval()
    _, fmap, cls = m.visual.trunk(torch.randn(2, 3, 128, 64))
    assert fmap.shape == (2, 64, 8, 4) and cls.shape == (2, 64)
    assert m.embed_tensor(torch.randn(2, 3, 128, 64)).shape == (2, 128)


def test_weights_formats_and_strictness(tmp_path, monkeypatch):
    torch.manual_seed(1)
    src = build_clip("tiny-rn")
    sd = src.state_dict()
    torch.save({"state_dict": {"module." + k: v for k, v in sd.items()}}, tmp_path / "w.bin")
    dst = build_clip("tiny-rn")
    load_clip_weights(dst, str(tmp_path / "w.bin"), "tiny-rn")
    assert all(torch.equal(dst.state_dict()[k], v) for k, v in sd.items())
    # OpenAI-style TorchScript archive: converted once to safetensors beside it
    traced = torch.jit.trace_module(src.eval(), {"encode_image": torch.randn(1, 3, 224, 224)})
    traced.save(str(tmp_path / "RN.pt"))
    dst2 = build_clip("tiny-rn")
    load_clip_weights(dst2, str(tmp_path / "RN.pt"), "tiny-rn")
    assert (tmp_path / "RN.safetensors").exists()
    assert torch.equal(dst2.visual.conv1.weight, src.visual.conv1.weight)
    # strict: a missing and an unexpected key are named
    bad = dict(sd)
    bad.pop("visual.conv1.weight")
    bad["extra.weight"] = torch.zeros(1)
    save_file({k: v.contiguous() for k, v in bad.items()}, str(tmp_path / "bad.safetensors"))
    with pytest.raises(WeightsError, match=r"missing 1 key\(s\), e.g. visual.conv1.weight.*unexpected 1 key\(s\), e.g. extra.weight"):
        load_clip_weights(build_clip("tiny-rn"), str(tmp_path / "bad.safetensors"), "tiny-rn")
    with pytest.raises(WeightsError, match="no such file"):
        read_state_dict(tmp_path / "nope.pt")
    # arbitrary pickles are refused, not executed
    import pickle
    (tmp_path / "evil.bin").write_bytes(pickle.dumps({"a": object()}))
    with pytest.raises(WeightsError, match="not a weights-only state dict"):
        read_state_dict(tmp_path / "evil.bin")
    # offline 'openai': one message naming the file to place
    import open_clip.pretrained as P

    def offline(*a, **k):
        raise OSError("network unreachable")
    monkeypatch.setattr(P, "download_pretrained", offline)
    with pytest.raises(WeightsError, match=r"RN50.pt.*model.weights=/path/to/RN50.pt"):
        load_clip_weights(build_clip("tiny-rn"), "openai", "RN50-quickgelu")


def test_text_encoder_equals_encode_text():
    """With the learnable tokens set to the embedding of 'X', the prompt path is CLIP's encode_text."""
    torch.manual_seed(0)
    m = build_model(ModelSpec("tiny-rn", 3, 4, 128, 64))
    clip_tok = open_clip.get_tokenizer("RN50-quickgelu")
    x_emb = m.token_embedding.weight[clip_tok.encode("X")[0]]
    with torch.no_grad():
        m.id_prompts.ctx.copy_(x_emb.expand_as(m.id_prompts.ctx))
        ours = m.text_features(m.id_prompts, torch.tensor([0, 2]))
        text = clip_tok(["A photo of a X X X X person."] * 2)
        emb = m.token_embedding(text) + m.text.positional_embedding
        x = m.text.ln_final(m.text.transformer(emb, attn_mask=m.text.attn_mask))
        ref = x[torch.arange(2), text.argmax(-1)] @ m.text.text_projection
    torch.testing.assert_close(ours, ref)
    assert m.id_prompts.n_prefix == 4 and m.clothes_prompts.n_prefix == 4
    assert m.id_prompts.ctx.shape == (3, 4, 64) and m.clothes_prompts.ctx.shape == (4, 4, 64)
    fresh = build_model(ModelSpec("tiny-rn", 300, 4, 128, 64)).id_prompts.ctx
    assert abs(fresh.std().item() - 0.02) < 0.001  # N(0, 0.02)


def test_variants_share_the_init_of_their_common_modules():
    """SSE's clothes prompts and SIM draw from their own streams: a variant's classifiers and BNNecks start
    where the same seed's baseline starts, so paired differences are not init draws."""
    from scireid.models.sci import ModelSpec, SCIModel

    base = dict(arch="tiny-rn", num_pids=5, num_clothes=9, height=64, width=32)
    models = {}
    for name, extra in {"baseline": {"sse": False, "sim": False}, "full": {}}.items():
        torch.manual_seed(7)
        models[name] = SCIModel(ModelSpec(**base, **extra))
    b, f = (dict(m.named_parameters()) for m in models.values())
    for n in ("classifier.weight", "classifier_proj.weight", "clothes_classifier.weight", "id_prompts.ctx"):
        assert torch.equal(b[n], f[n]), n
    assert "sim.gamma" in f and "clothes_prompts.ctx" in f


def test_prompts_cut_at_eot_give_the_full_context_feature():
    """PromptLearner's prompts stop at the EOT token; under the causal mask the EOT feature equals the one
    computed over the whole padded context (float64)."""
    from scireid.models.sci import ModelSpec, SCIModel

    torch.manual_seed(0)
    m = SCIModel(ModelSpec("tiny-rn", 3, 4, 64, 32, sse=False, sim=False)).double()
    labels = torch.tensor([0, 2, 1])
    prompts, tok = m.id_prompts(labels)
    full_len = m.text.positional_embedding.shape[0]
    assert prompts.shape[1] == tok.shape[1] < full_len
    pad = torch.zeros(3, full_len - prompts.shape[1], prompts.shape[2], dtype=prompts.dtype)
    full = m.text(torch.cat([prompts, pad], 1), torch.cat([tok, torch.zeros(3, full_len - tok.shape[1], dtype=tok.dtype)], 1))
    torch.testing.assert_close(m.text(prompts, tok), full, rtol=0, atol=1e-12)

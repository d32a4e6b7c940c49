"""The offline vision-language prior: captions, corpus, pretraining, the shipped file, prompt decoding."""
import json
import re

import numpy as np
import pytest
import torch

from scireid.data.captions import (BOTTOM_KINDS, BUILD_WORDS, COLOURS, HAIR_WORDS, SHOE_WORDS, SKIN_WORDS,
                                   caption, true_attributes)
from scireid.data.synthetic import _rand_camera, _rand_identity, _rand_outfit, generate, render
from scireid.prior.corpus import make_corpus

COL = "|".join(sorted(COLOURS, key=len, reverse=True))


def parse_caption(text: str) -> dict[str, int]:
    """An independent reading of a caption: every attribute it names, as a class index."""
    out: dict[str, int] = {}
    m = re.search(rf"\b({'|'.join(SKIN_WORDS)}) (skin|complexion)", text)
    if m:
        out["skin"] = SKIN_WORDS.index(m.group(1))
    m = re.search(rf"\b({'|'.join(HAIR_WORDS)}) (hair|ponytail)", text)
    if m:
        out["hair_colour"] = HAIR_WORDS.index(m.group(1))
    if "bald head" in text:
        out["hair_style"] = 3
    elif "ponytail" in text:
        out["hair_style"] = 2
    elif re.search(r"\blong (\w+ )?hair", text):
        out["hair_style"] = 1
    elif re.search(r"\bshort (\w+ )?hair", text):
        out["hair_style"] = 0
    m = re.search(rf"\b({'|'.join(SHOE_WORDS)}) (shoes|sneakers)", text)
    if m:
        out["shoes"] = SHOE_WORDS.index(m.group(1))
    if "no glasses" in text:
        out["glasses"] = 0
    elif "glasses" in text:
        out["glasses"] = 1
    if "no bag" in text:
        out["bag"] = 0
    elif "backpack" in text:
        out["bag"] = 1
    elif "shoulder bag" in text:
        out["bag"] = 2
    m = re.search(rf"\b({'|'.join(BUILD_WORDS)}) build", text)
    if m:
        out["build"] = BUILD_WORDS.index(m.group(1))
    m = re.search(rf"\b({COL})( (striped|checked|short-sleeved|long-sleeved))* (top|shirt)", text)
    if m:
        out["top_colour"] = COLOURS.index(m.group(1))
        span = m.group(0)
        if "long-sleeved" in span:
            out["sleeves"] = 1
        elif "short-sleeved" in span:
            out["sleeves"] = 0
        if "striped" in span:
            out["top_pattern"] = 1
        elif "checked" in span:
            out["top_pattern"] = 2
    if "with a logo" in text:
        out["top_pattern"] = 3
    m = re.search(rf"\b({COL}) (trousers|shorts|skirt|bottoms)", text)
    if m:
        out["bottom_colour"] = COLOURS.index(m.group(1))
        if m.group(2) != "bottoms":
            out["bottom_kind"] = BOTTOM_KINDS.index(m.group(2))
    return out


def test_every_mentioned_attribute_is_true_and_visible():
    corpus = make_corpus(300, seed=7)
    seen_kinds = set()
    for i in range(len(corpus)):
        for r in range(3):
            text = corpus.caption(i, np.random.default_rng([i, r]))
            named = parse_caption(text)
            seen_kinds |= set(named)
            for k, v in named.items():
                assert k in corpus.attrs[i], (text, k, "named but not visible")
                assert corpus.attrs[i][k] == v, (text, k, v, corpus.attrs[i])
    # every attribute appears somewhere, identity traits and clothes alike
    assert seen_kinds >= {"skin", "hair_colour", "hair_style", "shoes", "glasses", "bag", "build", "top_colour",
                          "sleeves", "bottom_colour", "bottom_kind", "top_pattern"}


def test_captions_vary_and_mix_traits_and_clothes():
    attrs = make_corpus(1, seed=3).attrs[0]
    caps = {caption(attrs, np.random.default_rng(s)) for s in range(60)}
    assert len(caps) > 40
    parsed = [parse_caption(c) for c in caps]
    traits_only = sum(1 for p in parsed if p and not ({"top_colour", "bottom_colour", "bottom_kind"} & set(p)))
    clothes_only = sum(1 for p in parsed if p and not ({"skin", "hair_colour", "shoes", "glasses", "bag"} & set(p)))
    assert traits_only >= 5 and clothes_only >= 5


def test_hidden_traits_are_not_captioned():
    rng = np.random.default_rng(0)
    person = _rand_identity(rng)
    person.glasses, person.bag = True, 1
    outfit, cam = _rand_outfit(rng), _rand_camera(rng)
    views = {}
    for _ in range(60):
        seen: dict = {}
        render(person, outfit, cam, rng, seen=seen)
        views[seen["view"]] = true_attributes(person, outfit, seen)
    assert "glasses" not in views[1] and views[0]["glasses"] == 1  # back view hides the glasses
    assert "bag" not in views[0] and views[1]["bag"] == 1  # a backpack is not seen from the front


def test_corpus_identities_never_overlap_reid_sets(tmp_path):
    corpus = make_corpus(400, seed=0)
    pre = {tuple(vars(p).values()) for p in corpus.identities}
    for seed in (0, 1, 2, 3, 5):
        meta = json.loads((generate(tmp_path / f"s{seed}", ids=6, seed=seed) / "synthetic.json").read_text())
        rng = np.random.default_rng(seed)  # the demo's full-size sets draw from the same stream
        [_rand_camera(rng) for _ in range(8)]
        [_rand_outfit(rng) for _ in range(40)]
        big = {tuple(vars(_rand_identity(rng)).values()) for _ in range(120)}
        small = {tuple(p.values()) for p in meta["identities"]}
        assert not (pre & big) and not (pre & small)


def test_pretrain_runs_and_resumes_bit_identically(tmp_path):
    from scireid.prior.pretrain import pretrain, pretrain_config
    base = ["arch=tiny-prior", "images=96", "epochs=2", "batch_size=32", "warmup_steps=2", "eval_images=24",
            "height=32", "width=16"]
    a = pretrain(tmp_path / "a", pretrain_config(base))
    with pytest.raises(KeyboardInterrupt):
        pretrain(tmp_path / "b", pretrain_config(base + ["stop_after_steps=4"]))
    pretrain(tmp_path / "b", pretrain_config(base + ["stop_after_steps=4"]), resume=True)
    from safetensors.torch import load_file
    wa, wb = (load_file(str(tmp_path / x / "tiny-prior.safetensors")) for x in ("a", "b"))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    prov = json.loads((tmp_path / "a" / "provenance.json").read_text())
    assert prov["corpus_images"] == 96 and set(prov["zero_shot"]["attributes"]) >= {"skin", "top_colour"}
    recs = [json.loads(x) for x in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in recs] == [1, 2] and all(np.isfinite(r["loss"]) for r in recs)
    assert a["zero_shot"] == prov["zero_shot"]


def test_shipped_prior_loads_everywhere_and_scores_as_recorded():
    import open_clip
    from scireid.models.backbone import CONFIG_DIR
    from scireid.models.sci import ModelSpec, build_model
    from scireid.models.weights import SHIPPED, WEIGHTS_DIR, shipped_path
    from scireid.prior.zeroshot import load_prior, zero_shot
    path = shipped_path("synthetic-clip")
    assert path.stat().st_size <= 25 * 2 ** 20
    prov = json.loads((WEIGHTS_DIR / "synthetic-clip.json").read_text())
    # plain open_clip: the JSON architecture + load_state_dict
    open_clip.add_model_config(CONFIG_DIR / f"{SHIPPED['synthetic-clip'][0]}.json")
    plain = open_clip.create_model(SHIPPED["synthetic-clip"][0])
    from safetensors.torch import load_file
    plain.load_state_dict({k: v.float() for k, v in load_file(str(path)).items()})
    ours = load_prior(path, "synth-clip")
    x = torch.randn(2, 3, 64, 64)
    torch.testing.assert_close(plain.eval().encode_image(x), ours.encode_image(x))
    # through model.weights=
    m = build_model(ModelSpec("synth-clip", 4, 6, 64, 32, sse=False, sim=False), "synthetic-clip")
    assert torch.equal(m.token_embedding.weight, ours.token_embedding.weight)
    # the recorded zero-shot numbers, recomputed on the fixed held-out set
    z = zero_shot(plain, n_images=prov["zero_shot"]["held_out_images"])
    for name, rec in prov["zero_shot"]["attributes"].items():
        assert z["attributes"][name]["accuracy"] == pytest.approx(rec["accuracy"], abs=1.0), name


def test_prompt_decoding_finds_a_planted_attribute():
    from scireid.analysis.mechanism import decode, encode_phrases
    from scireid.models.sci import ModelSpec, build_model
    torch.manual_seed(0)
    model = build_model(ModelSpec("tiny-rn", 3, 3, 64, 32, sse=False, sim=False))
    planted = encode_phrases(model, ["a photo of a person with blond hair", "a photo of a person with grey hair",
                                     "a photo of a person wearing a teal top"])
    truth = [{"hair_colour": {2}}, {"hair_colour": {4}}, {"top_colour": {COLOURS.index("teal")}}]
    res = decode(planted, lambda ph: encode_phrases(model, ph), truth)
    assert res["attributes"]["hair_colour"]["accuracy"] == 100.0
    assert res["attributes"]["top_colour"]["accuracy"] == 100.0
    # a wrong truth is scored wrong: the test can fail
    res = decode(planted, lambda ph: encode_phrases(model, ph), [{"hair_colour": {0}}, {"hair_colour": {0}},
                                                                   {"top_colour": {0}}])
    assert res["attributes"]["hair_colour"]["accuracy"] == 0.0


def test_pretrain_cli_and_eval(tmp_path, capsys):
    from scireid.cli import main
    args = ["pretrain", "--out", str(tmp_path / "p"), "--images", "64", "--epochs", "1", "arch=tiny-prior",
            "batch_size=32", "eval_images=16", "height=32", "width=16"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "hair_colour" in out and "model.weights=" in out
    prov = json.loads((tmp_path / "p" / "provenance.json").read_text())
    assert prov["command"].startswith("scireid pretrain") and prov["config"]["images"] == 64
    assert main(["pretrain", "--eval", str(tmp_path / "p" / "tiny-prior.safetensors"), "--arch", "tiny-prior"]) == 0
    assert "image->caption R@1" in capsys.readouterr().out
    assert main(["pretrain", "--eval", str(tmp_path / "p" / "tiny-prior.safetensors")]) == 2  # not a synth-clip file
    assert "not an open_clip synth-clip state dict" in capsys.readouterr().err
    assert main(["pretrain", "--out", str(tmp_path / "q"), "arch=tiny-prior"]) == 2  # 32x32 arch at height 64
    assert "takes 32x32 images" in capsys.readouterr().err

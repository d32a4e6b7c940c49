"""The offline vision-language prior: captions, corpus, pretraining, the shipped file, prompt decoding."""
import json
import math
import re

import numpy as np
import pytest
import torch

from scireid.data.captions import (BOTTOM_KINDS, BUILD_WORDS, COLOURS, HAIR_WORDS, SHOE_WORDS, SKIN_WORDS,
                                   caption, caption_named, hard_negative, true_attributes)
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
    m = re.search(rf"\b(({COL}) )?((plain|striped|checked|short-sleeved|long-sleeved) )*(top|shirt)\b", text)
    if m:
        if m.group(2):
            out["top_colour"] = COLOURS.index(m.group(2))
        span = m.group(0)
        if "long-sleeved" in span:
            out["sleeves"] = 1
        elif "short-sleeved" in span:
            out["sleeves"] = 0
        if "plain" in span:
            out["top_pattern"] = 0
        elif "striped" in span:
            out["top_pattern"] = 1
        elif "checked" in span:
            out["top_pattern"] = 2
    if "with a logo" in text:
        out["top_pattern"] = 3
    m = re.search(rf"\b(({COL}) )?(trousers|shorts|skirt|bottoms)", text)
    if m:
        if m.group(2):
            out["bottom_colour"] = COLOURS.index(m.group(2))
        if m.group(3) != "bottoms":
            out["bottom_kind"] = BOTTOM_KINDS.index(m.group(3))
    return out


def test_every_mentioned_attribute_is_true_and_visible():
    corpus = make_corpus(300, seed=7)
    seen_kinds = set()
    alone = 0
    for i in range(len(corpus)):
        for r in range(4):
            text, said = caption_named(corpus.attrs[i], np.random.default_rng([i, r]), alone=0.3, bare=0.3 * (r % 2))
            named = parse_caption(text)
            assert said == named, (text, said, named)  # what the generator reports naming is what the text says
            alone += len(named) == 1
            seen_kinds |= set(named)
            for k, v in named.items():
                assert k in corpus.attrs[i], (text, k, "named but not visible")
                assert corpus.attrs[i][k] == v, (text, k, v, corpus.attrs[i])
    # every attribute appears somewhere, identity traits and clothes alike
    assert seen_kinds >= {"skin", "hair_colour", "hair_style", "shoes", "glasses", "bag", "build", "top_colour",
                          "sleeves", "bottom_colour", "bottom_kind", "top_pattern"}
    assert alone >= 0.3 * 1200 - 60  # the "alone" share (plus mixed captions that happen to name one)


def test_hard_negatives_differ_from_the_image_in_what_they_name():
    corpus = make_corpus(200, seed=11)
    false = 0
    for i in range(len(corpus)):
        seed = [i, 5]
        text, said = caption_named(corpus.attrs[i], np.random.default_rng(seed), alone=0.3)
        neg, neg_said = hard_negative(corpus.attrs[i], said, seed, alone=0.3)
        assert parse_caption(neg) == neg_said and neg != text
        false += any(corpus.attrs[i].get(k) != v for k, v in neg_said.items())
    assert false >= 190  # nearly always untrue of its image; the rare true one is scored as a positive


def test_bare_captions_and_swap_negatives():
    """``bare``: the noun phrases alone, naming what they say; ``swap``: the two garments' colours trade places,
    the same words otherwise (with swap off, the negatives are exactly the earlier ones)."""
    from scireid.data.captions import OPENERS, SUBJECTS
    corpus = make_corpus(200, seed=3)
    swapped = 0
    for i in range(len(corpus)):
        a = corpus.attrs[i]
        text, said = caption_named(a, np.random.default_rng([i, 1]), bare=1.0)
        assert parse_caption(text) == said and said
        assert not any(text.startswith(o + s) for o in OPENERS if o for s in SUBJECTS)
        assert not any(text.startswith(s) for s in SUBJECTS)
        text, said = caption_named(a, np.random.default_rng([i, 2]), alone=0.3, bare=0.3)
        assert hard_negative(a, said, [i, 2], 0.3, 0.3, swap=0.0) == hard_negative(a, said, [i, 2], 0.3, 0.3)
        neg, neg_said = hard_negative(a, said, [i, 2], 0.3, 0.3, swap=1.0)
        assert parse_caption(neg) == neg_said
        if "top_colour" in said and "bottom_colour" in said and said["top_colour"] != said["bottom_colour"]:
            assert (neg_said["top_colour"], neg_said["bottom_colour"]) == (said["bottom_colour"], said["top_colour"])
            words = [sorted(w if w != "an" else "a" for w in t.replace(",", "").split()) for t in (neg, text)]
            assert words[0] == words[1]  # the same words ("a"/"an" aside), in the other order
            swapped += 1
    assert swapped >= 20


def test_held_out_templates_never_occur_in_the_corpus_captions():
    """The held-out wordings must be absent from what the caption generator can write, word for word."""
    from scireid.data.captions import ATTRIBUTES, EVAL_TEMPLATES, OPENERS, SUBJECTS
    corpus = make_corpus(400, seed=2)
    caps = [caption_named(corpus.attrs[i], np.random.default_rng([i, r]), alone=a)[0]
            for i in range(len(corpus)) for r, a in ((0, 0.0), (1, 0.3), (2, 1.0))] + [
        caption_named(corpus.attrs[i], np.random.default_rng([i, 3]), bare=1.0)[0] for i in range(len(corpus))]
    vocab = {w.strip(",") for c in caps for w in c.split()}
    held = {k: v for k, v in EVAL_TEMPLATES.items() if k != "seen"}
    assert len(held) >= 2
    for name, template in held.items():
        frame = set(re.sub(r"\{\w+\}", " ", template).replace(",", " ").split())
        for a in ATTRIBUTES:
            frame |= set(re.sub(r"\{\w+\}", " ", template.replace("{has}", "has" if a.identity else "wears")).split())
        frame = {w.strip(",") for w in frame}
        assert frame and not (frame & vocab), (name, frame & vocab)
        assert not any(w in " ".join(OPENERS + SUBJECTS).split() for w in frame)
        for a in ATTRIBUTES:
            for k in range(len(a.classes)):
                assert not any(a.phrase(k, template) in c for c in caps)
    # the "seen" wording is one the corpus does write: it is the control, not a held-out test
    seen = [a.phrase(k) for a in ATTRIBUTES for k in range(len(a.classes))]
    assert all(set(p.split()) <= vocab for p in seen)
    assert sum(any(p in c for c in caps) for p in seen) >= 5


def test_contrastive_loss_is_clip_loss_and_spreads_targets_over_true_pairs():
    from open_clip.loss import ClipLoss
    from scireid.prior.pretrain import consistency, contrastive_loss
    g = torch.Generator().manual_seed(0)
    img = torch.nn.functional.normalize(torch.randn(6, 8, generator=g, dtype=torch.float64), dim=-1)
    txt = torch.nn.functional.normalize(torch.randn(6, 8, generator=g, dtype=torch.float64), dim=-1)
    neg = torch.nn.functional.normalize(torch.randn(6, 8, generator=g, dtype=torch.float64), dim=-1)
    scale = torch.tensor(7.0, dtype=torch.float64)
    torch.testing.assert_close(contrastive_loss(img, txt, scale), ClipLoss()(img, txt, scale), rtol=0, atol=1e-12)
    # brute force: caption 0 is true of images 0 and 3; hard negative 2 is (accidentally) true of image 2
    named = np.array([[1, -1], [0, 0], [2, 1], [1, -1], [1, 1], [2, 2]])
    visible = np.array([[1, 0], [0, 0], [2, 1], [1, 5], [1, 1], [2, 2]])
    match = consistency(named, visible)
    assert match[0].tolist() == [True, False, False, True, True, False]
    neg_match = torch.zeros(6, 6, dtype=torch.bool)
    neg_match[2, 2] = True
    texts = torch.cat([txt, neg])
    total_i = 0.0
    for b in range(6):
        logits = [float(scale * img[b] @ texts[c]) for c in range(12)]
        lse = math.log(sum(math.exp(v) for v in logits))
        pos = [c for c in range(6) if match[c, b]] + [6 + c for c in range(6) if neg_match[c, b]]
        total_i += -sum(logits[c] - lse for c in pos) / len(pos)
    total_t = 0.0
    for c in range(6):
        logits = [float(scale * txt[c] @ img[b]) for b in range(6)]
        lse = math.log(sum(math.exp(v) for v in logits))
        pos = [b for b in range(6) if match[c, b]]
        total_t += -sum(logits[b] - lse for b in pos) / len(pos)
    want = (total_i / 6 + total_t / 6) / 2
    assert float(contrastive_loss(img, txt, scale, match, neg, neg_match)) == pytest.approx(want, abs=1e-12)


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
    out = capsys.readouterr().out
    assert "image->caption R@1" in out and "held-out 1" in out and "held-out 2" in out and "worst" in out
    assert main(["pretrain", "--eval", str(tmp_path / "p" / "tiny-prior.safetensors"), "--arch", "tiny-prior",
                 "--json"]) == 0
    rec = json.loads(capsys.readouterr().out)["attributes"]["skin"]
    assert set(rec["templates"]) == {"seen", "held-out 1", "held-out 2"}
    assert rec["worst_held_out"] == min(rec["templates"]["held-out 1"], rec["templates"]["held-out 2"])
    assert rec["worst"] <= rec["worst_held_out"] and {"chance", "majority"} <= set(rec)
    assert main(["pretrain", "--eval", str(tmp_path / "p" / "tiny-prior.safetensors")]) == 2  # not a synth-clip file
    assert "not an open_clip synth-clip state dict" in capsys.readouterr().err
    assert main(["pretrain", "--out", str(tmp_path / "q"), "arch=tiny-prior"]) == 2  # 32x32 arch at height 64
    assert "takes 32x32 images" in capsys.readouterr().err


def test_attribute_loss_by_brute_force():
    """Mean cross-entropy over visible (image, attribute) pairs, each against that attribute's class captions."""
    from scireid.data.captions import ATTRIBUTES
    from scireid.prior.pretrain import attribute_loss
    g = torch.Generator().manual_seed(1)
    n_cls = [len(a.classes) for a in ATTRIBUTES]
    img = torch.nn.functional.normalize(torch.randn(3, 8, generator=g, dtype=torch.float64), dim=-1)
    txt = torch.nn.functional.normalize(torch.randn(sum(n_cls), 8, generator=g, dtype=torch.float64), dim=-1)
    labels = torch.full((3, len(ATTRIBUTES)), -1)
    labels[0, 0], labels[1, 0], labels[2, 7], labels[2, 11] = 4, 1, 13, 2  # skin, skin, top colour, bottom kind
    scale = torch.tensor(5.0, dtype=torch.float64)
    total = 0.0
    for b, j in ((0, 0), (1, 0), (2, 7), (2, 11)):
        start = sum(n_cls[:j])
        logits = [float(scale * img[b] @ txt[start + c]) for c in range(n_cls[j])]
        total += math.log(sum(math.exp(v) for v in logits)) - logits[int(labels[b, j])]
    assert float(attribute_loss(img, txt, scale, labels)) == pytest.approx(total / 4, abs=1e-12)


def test_alone_captions_of_two_classes_differ_only_in_the_class_words():
    from scireid.data.captions import ATTRIBUTES, alone_caption
    for a in ATTRIBUTES:
        texts = [alone_caption(a.name, k, np.random.default_rng([3, 1]))[0] for k in range(len(a.classes))]
        assert len(set(texts)) == len(a.classes)
        for k, t in enumerate(texts):
            assert parse_caption(t) == {a.name: k}, t

"""Alt-text-like captions of synthetic people, and the attribute vocabulary used to score them.

Captions come from the generator's ground truth and name only what the image shows (see
``render``'s ``seen``). Like web alt-text they are partial and varied: a random subset of the
attributes in shuffled order and varied wording. A third name identity traits only, a third
clothes only, a third both: with mixed captions alone, contrastive training is solved by the
clothes (they cover most pixels) and the small identity traits are never learned.

The same vocabulary gives the zero-shot prompts ("a photo of a person with red hair") and
the phrases that learned ReID prompts are decoded against.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from .synthetic import Identity, Outfit

COLOURS = ["red", "blue", "green", "yellow", "white", "black", "grey", "brown", "pink", "purple", "orange", "teal",
           "light blue", "olive"]  # synthetic.PALETTE, in order
SKIN_WORDS = ["pale", "fair", "tan", "brown", "dark"]
HAIR_WORDS = ["black", "brown", "blond", "red", "grey"]
HAIR_STYLES = ["short", "long", "ponytail", "bald"]
SHOE_WORDS = ["black", "white", "red", "blue", "brown"]
BAG_WORDS = ["no bag", "a backpack", "a shoulder bag"]
TOP_PATTERNS = ["plain", "striped", "checked", "logo"]
BOTTOM_KINDS = ["trousers", "shorts", "skirt"]
BUILD_WORDS = ["slim", "broad"]


def build_class(build: float) -> int | None:
    """Only clear cases are named (slim < 0.9 <= average <= 1.05 < broad): an average build is not a cue."""
    return 0 if build < 0.9 else (1 if build > 1.05 else None)


@dataclass(frozen=True)
class Attribute:
    """One attribute: its classes, how to phrase a class, and whether it stays with the person."""
    name: str
    classes: tuple[str, ...]
    noun: str  # the class as a noun phrase: "{}" is replaced by the class word ("{} hair")
    identity: bool  # True: a trait of the person; False: part of the outfit

    @property
    def verb(self) -> str:
        return "with" if self.identity else "wearing"

    def phrase(self, k: int, template: str | None = None) -> str:
        """Class ``k`` in ``template``, one of ``EVAL_TEMPLATES``' values; by default the "seen" wording, the
        prompt the project decodes with (the corpus's captions can produce it word for word)."""
        text = (template or EVAL_TEMPLATES["seen"]).format(np=self.noun, verb=self.verb,
                                                           has="has" if self.identity else "wears")
        return re.sub(r"\ba (?=[aeiou])", "an ", text.format(self.classes[k]))


ATTRIBUTES: tuple[Attribute, ...] = (
    Attribute("skin", tuple(SKIN_WORDS), "{} skin", True),
    Attribute("hair_colour", tuple(HAIR_WORDS), "{} hair", True),
    Attribute("hair_style", ("short hair", "long hair", "a ponytail", "a bald head"), "{}", True),
    Attribute("shoes", tuple(SHOE_WORDS), "{} shoes", True),
    Attribute("glasses", ("no glasses", "glasses"), "{}", True),
    Attribute("bag", tuple(BAG_WORDS), "{}", True),
    Attribute("build", tuple(BUILD_WORDS), "a {} build", True),
    Attribute("top_colour", tuple(COLOURS), "a {} top", False),
    Attribute("top_pattern", ("plain top", "striped top", "checked top", "top with a logo"), "a {}", False),
    Attribute("sleeves", ("short-sleeved", "long-sleeved"), "a {} top", False),
    Attribute("bottom_colour", tuple(COLOURS), "{} bottoms", False),
    Attribute("bottom_kind", ("trousers", "shorts", "a skirt"), "{}", False),
)
# Zero-shot evaluation wordings. "seen" can occur in the corpus; the held-out ones use words the caption
# generator never writes (no word of theirs occurs in a caption: tests/test_prior.py checks it), so
# they measure whether the text tower names the attribute, not whether it recalls a sentence.
EVAL_TEMPLATES = {
    "seen": "a photo of a person {verb} {np}",
    "held-out 1": "{np}, seen on camera",
    "held-out 2": "this is somebody who {has} {np}",
}
ATTRIBUTE_BY_NAME = {a.name: a for a in ATTRIBUTES}


def true_attributes(ident: Identity, outfit: Outfit, seen: dict) -> dict[str, int]:
    """Class index of every attribute visible in one rendered image (``seen`` from ``render``)."""
    out = {"skin": ident.skin, "hair_colour": ident.hair, "hair_style": ident.hair_style, "build": build_class(ident.build),
           "top_colour": outfit.top, "top_pattern": seen["top_pattern"], "sleeves": int(outfit.long_sleeves)}
    if out["build"] is None:
        del out["build"]
    if ident.hair_style == 3:
        del out["hair_colour"]  # bald: no hair colour to see
    if seen["glasses"]:
        out["glasses"] = int(ident.glasses)
    if seen["bag"] is not None:
        out["bag"] = seen["bag"]
    if seen["feet"]:
        out["shoes"] = ident.shoes
    if seen["bottom"]:
        out["bottom_colour"] = outfit.bottom
        out["bottom_kind"] = outfit.bottom_kind
    return out


def identity_attributes(ident: Identity) -> dict[str, int]:
    """The traits that stay with a person whatever the view (for decoding identity prompts)."""
    out = {"skin": ident.skin, "hair_colour": ident.hair, "hair_style": ident.hair_style, "shoes": ident.shoes,
           "glasses": int(ident.glasses), "bag": ident.bag, "build": build_class(ident.build)}
    if out["build"] is None:
        del out["build"]
    if ident.hair_style == 3:
        del out["hair_colour"]
    return out


def outfit_attributes(outfit: Outfit) -> dict[str, int]:
    return {"top_colour": outfit.top, "top_pattern": outfit.top_pattern, "sleeves": int(outfit.long_sleeves),
            "bottom_colour": outfit.bottom, "bottom_kind": outfit.bottom_kind}


# ---- caption generation -------------------------------------------------------------------------------
SUBJECTS = ["a person", "someone", "a pedestrian", "a man or woman", "a walker", "a young adult"]
OPENERS = ["", "", "a photo of ", "a picture of ", "cctv image of ", "surveillance shot of ", "a cropped photo of "]


def _a(words: str) -> str:
    return ("an " if words[0] in "aeiou" else "a ") + words


Phrase = tuple[str, dict[str, int]]  # a phrase and the attribute classes it names


def _hair_phrase(a: dict[str, int], rng) -> Phrase | None:
    style = a.get("hair_style")
    colour = a["hair_colour"] if "hair_colour" in a and rng.random() < 0.8 else None
    if style == 3:
        return "a bald head", {"hair_style": 3}
    if style == 2:
        return (_a(f"{HAIR_WORDS[colour]} ponytail"), {"hair_style": 2, "hair_colour": colour}) if colour is not None \
            else ("a ponytail", {"hair_style": 2})
    named = {}
    if style is not None and rng.random() < 0.7:
        named["hair_style"] = style
    if colour is not None:
        named["hair_colour"] = colour
    words = " ".join(w for w in (HAIR_STYLES[style] if "hair_style" in named else None,
                                 HAIR_WORDS[colour] if colour is not None else None) if w)
    return (f"{words} hair", named) if words else None


def _trait_phrases(a: dict[str, int], rng) -> list[Phrase]:
    out = []
    if "skin" in a:
        out.append((rng.choice([f"{SKIN_WORDS[a['skin']]} skin", _a(f"{SKIN_WORDS[a['skin']]} complexion")]),
                    {"skin": a["skin"]}))
    hair = _hair_phrase(a, rng)
    if hair:
        out.append(hair)
    if "shoes" in a:
        out.append((rng.choice([f"{SHOE_WORDS[a['shoes']]} shoes", f"{SHOE_WORDS[a['shoes']]} sneakers"]),
                    {"shoes": a["shoes"]}))
    if "glasses" in a:
        out.append(("glasses" if a["glasses"] else "no glasses", {"glasses": a["glasses"]}))
    if "bag" in a:
        out.append((["no bag", rng.choice(["a backpack", "a brown backpack"]), "a shoulder bag"][a["bag"]],
                    {"bag": a["bag"]}))
    if "build" in a:
        out.append((_a(f"{BUILD_WORDS[a['build']]} build"), {"build": a["build"]}))
    return out


def _top_phrase(colour: int | None, pattern: int | None, sleeves: int | None, rng) -> Phrase:
    words, named = [], {}
    if colour is not None:
        words.append(COLOURS[colour])
        named["top_colour"] = colour
    if pattern in (0, 1, 2):
        words.append(TOP_PATTERNS[pattern])
        named["top_pattern"] = pattern
    if sleeves is not None:
        words.append(["short-sleeved", "long-sleeved"][sleeves])
        named["sleeves"] = sleeves
    text = _a(f"{' '.join(words)} {rng.choice(['top', 'shirt', 'top'])}" if words else str(rng.choice(["top", "shirt"])))
    if pattern == 3:
        text += " with a logo"
        named["top_pattern"] = 3
    return text, named


def _bottom_phrase(colour: int | None, kind: int | None) -> Phrase:
    named = {}
    if colour is not None:
        named["bottom_colour"] = colour
    if kind is not None:
        named["bottom_kind"] = kind
    words = f"{COLOURS[colour] + ' ' if colour is not None else ''}{BOTTOM_KINDS[kind] if kind is not None else 'bottoms'}"
    return (_a(words) if kind == 2 else words), named


def _clothes_phrases(a: dict[str, int], rng) -> list[Phrase]:
    out = []
    if "top_colour" in a:
        pattern = a.get("top_pattern", 0)
        named_pattern = pattern if (pattern in (1, 2) and rng.random() < 0.8) or (pattern == 0 and rng.random() < 0.15) \
            or (pattern == 3 and rng.random() < 0.8) else None
        sleeves = a["sleeves"] if rng.random() < 0.6 else None
        out.append(_top_phrase(a["top_colour"], named_pattern, sleeves, rng))
    if "bottom_kind" in a:
        colour = a["bottom_colour"] if rng.random() < 0.85 else None
        kind = None if colour is not None and rng.random() < 0.2 else a["bottom_kind"]
        out.append(_bottom_phrase(colour, kind))
    return out


def _single_phrase(name: str, k: int, rng) -> Phrase:
    """A phrase naming one attribute and nothing else: the "alone" captions that tie each word to its pixels."""
    if name == "hair_style":
        return ["short hair", "long hair", "a ponytail", "a bald head"][k], {name: k}
    if name == "hair_colour":
        return f"{HAIR_WORDS[k]} hair", {name: k}
    if name in ("top_colour", "top_pattern", "sleeves"):
        return _top_phrase(k if name == "top_colour" else None, k if name == "top_pattern" else None,
                           k if name == "sleeves" else None, rng)
    if name in ("bottom_colour", "bottom_kind"):
        return _bottom_phrase(k if name == "bottom_colour" else None, k if name == "bottom_kind" else None)
    phrases = {p[1].get(name): p for p in _trait_phrases({name: k}, rng)}
    return phrases[k]


CLOTHES = ("top_colour", "top_pattern", "sleeves", "bottom_colour", "bottom_kind")


def _join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def caption_named(attrs: dict[str, int], rng: np.random.Generator, alone: float = 0.0,
                  bare: float = 0.0) -> tuple[str, dict[str, int]]:
    """One natural caption naming a random subset of ``attrs``, and the classes it names (all true).

    With probability ``alone`` the caption names one visible attribute only ("a person in a striped top"):
    mixed captions name most attributes only beside others, and contrastive training then learns whichever
    words are easiest to match, not each one. With probability ``bare`` it is the noun phrases alone, as in
    tag-like alt-text ("a red top and black trousers"): otherwise every caption opens with a person, and the
    text tower only binds a colour to its garment after that opening.
    """
    if alone and rng.random() < alone:
        name = str(rng.choice(sorted(attrs)))
        return alone_caption(name, attrs[name], rng)
    is_bare = bool(bare) and rng.random() < bare
    mode = rng.choice(3)  # 0 traits only, 1 clothes only, 2 both
    tp = _trait_phrases(attrs, rng) if mode in (0, 2) else []
    cp = _clothes_phrases(attrs, rng) if mode in (1, 2) else []
    for lst in (tp, cp):
        rng.shuffle(lst)
    if mode == 2:  # alt-text is partial: drop some of each, keep at least one
        tp = tp[: max(1, int(rng.integers(1, len(tp) + 1)))] if tp else []
        cp = cp[: int(rng.integers(1, len(cp) + 1))] if cp else []
    named = {k: v for _, n in tp + cp for k, v in n.items()}
    traits, clothes = [t for t, _ in tp], [t for t, _ in cp]
    if is_bare and traits + clothes:
        items = traits + clothes
        rng.shuffle(items)
        return _join(items), named
    subject = str(rng.choice(SUBJECTS))
    opener = str(rng.choice(OPENERS))
    parts = []
    if traits:
        parts.append("with " + _join(traits))
    if clothes:
        parts.append(str(rng.choice(["wearing ", "in ", "dressed in "])) + _join(clothes))
    if len(parts) == 2 and rng.random() < 0.5:
        parts.reverse()
    if not parts:
        return f"{opener}{subject}".strip(), {}
    return f"{opener}{subject} {' '.join(parts)}".strip(), named


def alone_caption(name: str, k: int, rng: np.random.Generator) -> tuple[str, dict[str, int]]:
    """A caption naming attribute ``name`` as class ``k`` and nothing else, in the corpus's wording. Drawn with
    equal generators, the captions of two classes differ only in the class's words."""
    text, named = _single_phrase(name, k, rng)
    subject, opener = str(rng.choice(SUBJECTS)), str(rng.choice(OPENERS))
    verb = str(rng.choice(["wearing ", "in ", "dressed in "])) if name in CLOTHES else "with "
    return f"{opener}{subject} {verb}{text}".strip(), named


def caption(attrs: dict[str, int], rng: np.random.Generator, alone: float = 0.0, bare: float = 0.0) -> str:
    """One natural caption naming a random subset of ``attrs`` (every named attribute is true)."""
    return caption_named(attrs, rng, alone, bare)[0]


def hard_negative(attrs: dict[str, int], named: dict[str, int], seed, alone: float = 0.0, bare: float = 0.0,
                  swap: float = 0.0) -> tuple[str, dict[str, int]]:
    """The caption drawn with ``seed`` again, one named attribute changed to another class (NegCLIP's hard negatives:
    a caption that differs from a true one in a single word teaches which word goes with which pixels).

    With probability ``swap``, when the caption names two different colours for the top and the bottoms, they
    trade places instead (NegCLIP's swap negatives): the same words in the other order, which only a text
    tower that binds each colour to its garment can tell apart.
    """
    rng = np.random.default_rng(seed)
    if not named:
        return caption_named(attrs, rng, alone, bare)
    top, bottom = named.get("top_colour"), named.get("bottom_colour")
    if swap and top is not None and bottom is not None and top != bottom \
            and np.random.default_rng([*np.atleast_1d(seed), 1]).random() < swap:
        return caption_named({**attrs, "top_colour": bottom, "bottom_colour": top}, rng, alone, bare)
    keys = sorted(named)
    k = keys[int(rng.integers(len(keys)))]
    n = len(ATTRIBUTE_BY_NAME[k].classes)
    wrong = dict(attrs)
    wrong[k] = int((named[k] + 1 + rng.integers(n - 1)) % n)
    if k == "hair_style" and wrong[k] == 3:
        wrong.pop("hair_colour", None)
    elif k == "hair_style" and "hair_colour" not in wrong:
        wrong["hair_colour"] = 0
    return caption_named(wrong, np.random.default_rng(seed), alone, bare)

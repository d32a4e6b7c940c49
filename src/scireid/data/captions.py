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
    template: str  # "{}" is replaced by the class word
    identity: bool  # True: a trait of the person; False: part of the outfit

    def phrase(self, k: int) -> str:
        return re.sub(r"\ba (?=[aeiou])", "an ", self.template.format(self.classes[k]))


ATTRIBUTES: tuple[Attribute, ...] = (
    Attribute("skin", tuple(SKIN_WORDS), "a photo of a person with {} skin", True),
    Attribute("hair_colour", tuple(HAIR_WORDS), "a photo of a person with {} hair", True),
    Attribute("hair_style", ("short hair", "long hair", "a ponytail", "a bald head"), "a photo of a person with {}",
              True),
    Attribute("shoes", tuple(SHOE_WORDS), "a photo of a person wearing {} shoes", True),
    Attribute("glasses", ("no glasses", "glasses"), "a photo of a person with {}", True),
    Attribute("bag", tuple(BAG_WORDS), "a photo of a person with {}", True),
    Attribute("build", tuple(BUILD_WORDS), "a photo of a person with a {} build", True),
    Attribute("top_colour", tuple(COLOURS), "a photo of a person wearing a {} top", False),
    Attribute("top_pattern", tuple(TOP_PATTERNS), "a photo of a person wearing a {} top", False),
    Attribute("sleeves", ("short-sleeved", "long-sleeved"), "a photo of a person wearing a {} top", False),
    Attribute("bottom_colour", tuple(COLOURS), "a photo of a person wearing {} bottoms", False),
    Attribute("bottom_kind", ("trousers", "shorts", "a skirt"), "a photo of a person wearing {}", False),
)
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


def _hair_phrase(a: dict[str, int], rng) -> str | None:
    style = a.get("hair_style")
    colour = HAIR_WORDS[a["hair_colour"]] if "hair_colour" in a and rng.random() < 0.8 else None
    if style == 3:
        return "a bald head"
    if style == 2:
        return _a(f"{colour} ponytail") if colour else "a ponytail"
    length = HAIR_STYLES[style] if style is not None and rng.random() < 0.7 else None
    words = " ".join(w for w in (length, colour) if w)
    return f"{words} hair" if words else None


def _trait_phrases(a: dict[str, int], rng) -> list[str]:
    out = []
    if "skin" in a:
        out.append(rng.choice([f"{SKIN_WORDS[a['skin']]} skin", _a(f"{SKIN_WORDS[a['skin']]} complexion")]))
    hair = _hair_phrase(a, rng)
    if hair:
        out.append(hair)
    if "shoes" in a:
        out.append(rng.choice([f"{SHOE_WORDS[a['shoes']]} shoes", f"{SHOE_WORDS[a['shoes']]} sneakers"]))
    if "glasses" in a:
        out.append("glasses" if a["glasses"] else "no glasses")
    if "bag" in a:
        out.append(["no bag", rng.choice(["a backpack", "a brown backpack"]), "a shoulder bag"][a["bag"]])
    if "build" in a:
        out.append(_a(f"{BUILD_WORDS[a['build']]} build"))
    return out


def _clothes_phrases(a: dict[str, int], rng) -> list[str]:
    out = []
    if "top_colour" in a:
        words = [COLOURS[a["top_colour"]]]
        if a.get("top_pattern", 0) in (1, 2) and rng.random() < 0.8:
            words.append(TOP_PATTERNS[a["top_pattern"]])
        if rng.random() < 0.6:
            words.append(["short-sleeved", "long-sleeved"][a["sleeves"]])
        noun = rng.choice(["top", "shirt", "top"])
        text = _a(f"{' '.join(words)} {noun}")
        if a.get("top_pattern") == 3 and rng.random() < 0.8:
            text += " with a logo"
        out.append(text)
    if "bottom_kind" in a:
        kind = BOTTOM_KINDS[a["bottom_kind"]]
        colour = COLOURS[a["bottom_colour"]] if rng.random() < 0.85 else None
        if colour and rng.random() < 0.2:
            kind = "bottoms"
        words = f"{colour + ' ' if colour else ''}{kind}"
        out.append(_a(words) if kind == "skirt" else words)
    return out


def _join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def caption(attrs: dict[str, int], rng: np.random.Generator) -> str:
    """One natural caption naming a random subset of ``attrs`` (every named attribute is true)."""
    mode = rng.choice(3)  # 0 traits only, 1 clothes only, 2 both
    traits = _trait_phrases(attrs, rng) if mode in (0, 2) else []
    clothes = _clothes_phrases(attrs, rng) if mode in (1, 2) else []
    for lst in (traits, clothes):
        rng.shuffle(lst)
    if mode == 2:  # alt-text is partial: drop some of each, keep at least one
        traits = traits[: max(1, int(rng.integers(1, len(traits) + 1)))] if traits else []
        clothes = clothes[: int(rng.integers(1, len(clothes) + 1))] if clothes else []
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
        return f"{opener}{subject}".strip()
    return f"{opener}{subject} {' '.join(parts)}".strip()

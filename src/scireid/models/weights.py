"""Weights resolver: ``openai`` (open_clip's hub download), a shipped prior, a local file, or ``none``.

Files are read with safetensors or ``torch.load(weights_only=True)``; OpenAI's original
TorchScript ``.pt`` archives are converted once to a ``.safetensors`` file beside them.
Loading is strict: a missing or unexpected key is an error that names it.
"""
from __future__ import annotations

import logging
import warnings
import zipfile
from pathlib import Path

import torch
from torch import nn

from ..errors import WeightsError

log = logging.getLogger(__name__)
NON_PARAM_KEYS = ("input_resolution", "context_length", "vocab_size", "attn_mask")
WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights"
# weights shipped inside the package: name -> (architecture, file under scireid/weights)
SHIPPED = {"synthetic-clip": ("synth-clip", "synthetic-clip.safetensors")}


def list_weights() -> list[str]:
    return ["none", "openai", *sorted(SHIPPED)]


def shipped_path(name: str) -> Path:
    return WEIGHTS_DIR / SHIPPED[name][1]


def check_weights_setting(weights: str, arch: str) -> None:
    """Fail before training if ``model.weights`` cannot be resolved for ``arch``."""
    if weights in ("none", "", "openai"):
        return
    if weights in SHIPPED:
        want = SHIPPED[weights][0]
        if arch != want:
            raise WeightsError(f"model.weights={weights} is a {want} model; set model.arch={want} (got {arch})")
        if not shipped_path(weights).is_file():
            raise WeightsError(f"model.weights={weights}: {shipped_path(weights)} is missing from this install; "
                               f"rebuild it with 'scireid pretrain' (see README)")
        return
    p = Path(weights).expanduser()
    if not p.is_file():
        raise WeightsError(f"model.weights={weights}: no such file, and not one of {', '.join(list_weights())}")


def _is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        return any(n.endswith("constants.pkl") or "/code/" in n for n in z.namelist())


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    path = Path(path).expanduser()
    if not path.is_file():
        raise WeightsError(f"model.weights={path}: no such file")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as e:  # SafetensorError on a corrupt or foreign file
            raise WeightsError(f"model.weights={path}: not a readable safetensors file ({str(e).splitlines()[0]})") from None
    if _is_torchscript(path):
        converted = path.with_suffix(".safetensors")
        if not converted.exists():
            log.info("converting TorchScript checkpoint %s to %s (once)", path, converted)
            try:
                with warnings.catch_warnings():  # torch 2.14 deprecates jit.load; OpenAI's files still need it
                    warnings.simplefilter("ignore", FutureWarning)
                    ts = torch.jit.load(str(path), map_location="cpu")
            except Exception:
                raise WeightsError(f"model.weights={path}: a zip archive that is not a TorchScript model; expected "
                                   f"OpenAI's .pt, a .safetensors or a state dict saved with torch.save") from None
            sd = {k: v.float().contiguous() for k, v in ts.state_dict().items()}
            from safetensors.torch import save_file

            from ..durable import atomic_write
            atomic_write(converted, lambda tmp: save_file(sd, tmp))
        return read_state_dict(converted)
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # an unpickling refusal or a corrupt file: both are the file's problem
        why = ("it holds pickled Python objects, which scireid never loads" if "Weights only load failed" in str(e)
               else f"unreadable: {type(e).__name__}")
        raise WeightsError(f"model.weights={path}: not a weights-only state dict ({why}); save the tensors alone "
                           f"(model.state_dict()) or as .safetensors") from None
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict):
        raise WeightsError(f"model.weights={path}: expected a state dict, got {type(sd).__name__}")
    return sd


def clean_state_dict(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for k, v in sd.items():
        if k in NON_PARAM_KEYS:
            continue
        out[k[len("module."):] if k.startswith("module.") else k] = v
    return out


def load_strict(model: nn.Module, sd: dict[str, torch.Tensor], source: str) -> None:
    sd = clean_state_dict(sd)
    own = model.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} key(s), e.g. {', '.join(missing[:3])}")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} key(s), e.g. {', '.join(unexpected[:3])}")
        raise WeightsError(f"{source}: does not match the architecture: {'; '.join(parts)}")
    bad = [k for k in own if own[k].shape != sd[k].shape]
    if bad:
        k = bad[0]
        raise WeightsError(f"{source}: {k} has shape {tuple(sd[k].shape)}, the model expects {tuple(own[k].shape)}")
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in sd.items()}, strict=True)


def openai_weights_path(arch: str) -> Path:
    """Through open_clip's download (cache first); offline, one message saying what to place where."""
    import open_clip
    from open_clip.pretrained import download_pretrained, get_pretrained_cfg

    name = arch.replace("-quickgelu", "")
    cfg = get_pretrained_cfg(arch, "openai") or get_pretrained_cfg(name, "openai")
    if not cfg:
        raise WeightsError(f"model.weights=openai: OpenAI publishes no weights for {arch}; use RN50-quickgelu or ViT-B-16-quickgelu")
    try:
        return Path(download_pretrained(cfg))
    except Exception as e:
        file = cfg.get("url", "").rsplit("/", 1)[-1] or f"{name}.pt"
        raise WeightsError(
            f"model.weights=openai: could not fetch OpenAI {name} weights ({type(e).__name__}); offline, download "
            f"{file} (open_clip {open_clip.__version__}: {cfg.get('hf_hub') or cfg.get('url')}) on a connected machine "
            f"and pass model.weights=/path/to/{file}") from None


def load_clip_weights(clip: nn.Module, weights: str, arch: str) -> None:
    if weights in ("none", "", None):
        log.info("model %s: random init (model.weights=none)", arch)
        return
    check_weights_setting(weights, arch)
    if weights == "openai":
        path = openai_weights_path(arch)
    elif weights in SHIPPED:
        path = shipped_path(weights)
    else:
        path = Path(weights).expanduser()
    load_strict(clip, read_state_dict(path), f"model.weights={path}")
    log.info("model %s: loaded %s", arch, path)

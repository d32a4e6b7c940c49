"""Typed configuration: dataclasses, YAML presets, dotted ``key=value`` overrides.

Every field has a type; a YAML file or override that names an unknown key or gives a
value of the wrong type is rejected with the key, the value and what was expected,
so that a typo never silently trains the wrong recipe.
"""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError  # re-exported

PRESET_DIR = Path(__file__).parent / "configs"
__all__ = ["Config", "ConfigError", "load_config", "apply_overrides", "config_from_dict", "save_config", "list_presets",
           "list_variants"]


@dataclass
class DataConfig:
    name: str = "synthetic"  # ltcc | prcc | vcclothes | market1501 | msmt17 | synthetic | custom
    root: str = "data/synthetic"
    height: int = 256
    width: int = 128
    pixel_mean: list[float] = field(default_factory=lambda: [0.485, 0.456, 0.406])
    pixel_std: list[float] = field(default_factory=lambda: [0.229, 0.224, 0.225])
    flip_prob: float = 0.5
    padding: int = 10
    erasing_prob: float = 0.5
    num_instances: int = 4  # K of the P x K sampler
    workers: int = 2
    # decode the train images once into a uint8 tensor on the training device and augment batches there (flip,
    # pad-crop, erasing): the same batches as the PIL path, bit for bit, without per-image CPU work each epoch.
    # Memory: 3 x height x width bytes per train image (LTCC at 256x128: 0.9 GB)
    device_augment: bool = False
    prcc_single_shot: bool = False  # PRCC: 10x seeded single-shot gallery instead of multi-shot
    prcc_trials: int = 10
    synth_ids: int = 120  # synthetic only: identities to generate when root is empty
    synth_seed: int = 0


@dataclass
class ModelConfig:
    arch: str = "RN50-quickgelu"  # see scireid.models.list_models()
    weights: str = "openai"  # openai | none | path to .safetensors/.bin/.pt
    n_ctx: int = 4  # learnable tokens per prompt
    sse: bool = True  # clothes prompts + orthogonalisation (stage 1) and T_ort prototypes
    sim: bool = True  # semantic-guided interaction module (stage 2)
    sim_attention: str = "nonlocal"  # nonlocal | self
    sim_pooling: str = "mean"  # mean | similarity
    sim_heads: int = 8
    # p' = p + gamma * r (absolute, eq. 17 as written) or p + gamma * |p| * r / |r| (relative: the gate is the
    # fraction of |p| that SIM may move, whatever the backbone's feature scale)
    sim_residual: str = "absolute"
    # test feature: concat(g, p') as CLIP-ReID (concat) or concat(g/|g|, p'/|p'|) (balanced: each half weighs the same)
    test_feature: str = "concat"
    # SIM's gate (eq. 17): one scalar as the paper (scalar) or one per channel of p (channel, LayerScale-style), and
    # its initial value: 0, the paper's reading (a closed gate; on LTCC's 18k stage-2 steps Adam can open it to ~2)
    sim_gate: str = "scalar"
    sim_gate_init: float = 0.0


@dataclass
class Stage1Config:
    epochs: int = 60
    batch_size: int = 64
    lr: float = 3.5e-4
    weight_decay: float = 1e-4
    warmup_epochs: int = 5
    warmup_lr: float = 1e-5
    min_lr: float = 1e-6
    lambda1: float = 1.0  # weight of (1 - S_id)
    lambda2: float = 1.0  # weight of S_clo
    contrastive_text: str = "ort"  # ort | id: which text feature enters L_i2t / L_t2i
    normalize: bool = False  # CLIP-ReID: raw dot products, temperature 1
    temperature: float = 1.0


@dataclass
class Stage2Config:
    epochs: int = 120
    batch_size: int = 64
    lr: float = 3.5e-4
    weight_decay: float = 5e-4
    bias_lr_factor: float = 2.0
    warmup_epochs: int = 10
    warmup_factor: float = 0.01
    milestones: list[int] = field(default_factory=lambda: [40, 70])
    lr_gamma: float = 0.1
    label_smoothing: float = 0.1
    id_weight: float = 1.0  # CLIP-ReID's CNN recipe (cnn_clipreid.yml); its ViT recipe uses 0.25
    triplet_weight: float = 1.0
    triplet_margin: float = 0.3
    # CLIP-ReID: batch-hard triplet on raw features; true: on L2-normalised features (margin in chord units)
    triplet_normalize: bool = False
    i2t_weight: float = 1.0
    # CLIP-ReID: raw dot products p'.T (raw); cosine: i2t_scale * cos(p', T), the stage-1 geometry
    i2t_logits: str = "raw"
    i2t_scale: float = 1.0
    cal: bool = True
    cal_weight: float = 1.0
    cal_start_epoch: int = 45  # 5 epochs after the first lr decay
    cal_classifier_start_epoch: int = -1  # clothes classifier alone from here (-1: with the adversarial loss)
    cal_lr: float = 3.5e-4
    cal_scale: float = 16.0
    cal_epsilon: float = 0.1
    eval_every: int = 10  # epochs between evaluations (and always the last); 0: none during training (scireid eval)
    # SIM's gate trains in its own parameter group, without weight decay (a gate's size is not a complexity to
    # penalise), at lr x gate_lr_factor: Adam moves it by about that lr per step, whatever its gradient's scale
    gate_lr_factor: float = 1.0
    freeze_backbone_bn: bool = False  # CLIP trunk's BatchNorm layers keep their pretrained statistics (CLIP-ReID: off)


@dataclass
class EvalConfig:
    batch_size: int = 128
    flip: bool = False  # average features of the image and its mirror
    rerank: bool = False
    chunk: int = 1024  # query rows per block: bounds memory


@dataclass
class RunConfig:
    out: str = "runs/default"
    seed: int = 1
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    amp: bool = True  # mixed precision on GPU; CPU always fp32
    # bf16 (losses in fp32, no scaler) or fp16 with a GradScaler, as CLIP-ReID trains (its torch.cuda.amp loop)
    amp_dtype: str = "bf16"
    deterministic: bool = False
    compile: bool = False  # torch.compile stage 1's text encoder and stage 2's image trunk
    # torch.compile's mode: reduce-overhead replays them as CUDA graphs (one launch instead of hundreds: both stages'
    # steps are launch-bound on a GPU at batch 64)
    compile_mode: str = "default"
    # GPU: steps between host reads of the loss (its finite check, the progress bar). A read waits for the GPU to
    # finish, and a launch-bound step cannot afford one every step; a non-finite loss is still caught before any
    # checkpoint is written. CPU reads every step (free there).
    sync_every: int = 50
    tensorboard: bool = True
    checkpoint_every: int = 1  # epochs
    checkpoint_steps: int = 0  # also checkpoint every N steps inside an epoch (0 = epoch ends only)
    max_steps_per_epoch: int = 0  # 0 = whole epoch; >0 truncates (smoke runs)
    stop_after_steps: int = 0  # stop (as if killed) after N steps: for testing resume
    # CPU: subnormal floats computed as zero. Backward through the prior's frozen BatchNorm makes many of them,
    # and each costs ~100 cycles: stage 2 of the CPU demo ran 1.5x faster with this on (BENCHMARKS.md)
    flush_denormal: bool = True


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    stage1: Stage1Config = field(default_factory=Stage1Config)
    stage2: Stage2Config = field(default_factory=Stage2Config)
    eval: EvalConfig = field(default_factory=EvalConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


CHOICES = {
    "data.name": ("ltcc", "prcc", "vcclothes", "market1501", "msmt17", "synthetic", "custom"),
    "model.sim_attention": ("nonlocal", "self"),
    "model.sim_pooling": ("mean", "similarity"),
    "stage1.contrastive_text": ("ort", "id"),
    "model.sim_residual": ("absolute", "relative"),
    "model.test_feature": ("concat", "balanced"),
    "model.sim_gate": ("scalar", "channel"),
    "stage2.i2t_logits": ("raw", "cosine"),
    "run.amp_dtype": ("bf16", "fp16"),
    "run.compile_mode": ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"),
}


def _coerce(key: str, value: Any, typ: Any) -> Any:
    """Convert ``value`` to ``typ`` or raise ConfigError naming ``key``."""
    origin = typing.get_origin(typ)
    if origin is list:
        (inner,) = typing.get_args(typ)
        if isinstance(value, str):
            value = yaml.safe_load(value) if value.strip().startswith("[") else [v for v in value.split(",") if v]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return [_coerce(key, v, inner) for v in value]
    if typ is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "on"):
            return True
        if isinstance(value, str) and value.lower() in ("false", "0", "no", "off"):
            return False
        raise ConfigError(f"{key}: expected true/false, got {value!r}")
    if typ is int:
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        if isinstance(value, int):
            return value
        try:
            return int(str(value))
        except ValueError:
            raise ConfigError(f"{key}: expected an integer, got {value!r}") from None
    if typ is float:
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key}: expected a number, got {value!r}") from None
    if typ is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        value = str(value)
        if key in CHOICES and value not in CHOICES[key]:
            raise ConfigError(f"{key}: {value!r} is not one of {', '.join(CHOICES[key])}")
        return value
    raise ConfigError(f"{key}: unsupported type {typ}")  # pragma: no cover


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def set_value(cfg: Config, dotted: str, value: Any) -> None:
    """Set ``section.key`` on ``cfg``; unknown sections or keys are errors."""
    parts = dotted.split(".")
    if len(parts) != 2:
        raise ConfigError(f"{dotted}: expected section.key, sections are {', '.join(_field_types(Config))}")
    section, key = parts
    sections = _field_types(Config)
    if section not in sections:
        raise ConfigError(f"{dotted}: unknown section {section!r}; allowed: {', '.join(sections)}")
    sub = getattr(cfg, section)
    types_ = _field_types(type(sub))
    if key not in types_:
        raise ConfigError(f"{dotted}: unknown key {key!r}; allowed in {section}: {', '.join(types_)}")
    setattr(sub, key, _coerce(dotted, value, types_[key]))


def merge_dict(cfg: Config, data: dict[str, Any], source: str = "config") -> Config:
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping of sections, got {type(data).__name__}")
    for section, values in data.items():
        if section not in _field_types(Config):
            raise ConfigError(f"{source}: unknown section {section!r}; allowed: {', '.join(_field_types(Config))}")
        if values is None:
            continue
        if not isinstance(values, dict):
            raise ConfigError(f"{source}: section {section!r} must be a mapping")
        for key, value in values.items():
            try:
                set_value(cfg, f"{section}.{key}", value)
            except ConfigError as e:
                raise ConfigError(f"{source}: {e}") from None
    return cfg


def list_presets() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def list_variants() -> list[str]:
    return sorted(p.stem for p in (PRESET_DIR / "variants").glob("*.yaml"))


def list_backbones() -> list[str]:
    return sorted(p.stem for p in (PRESET_DIR / "backbones").glob("*.yaml"))


def backbone_of(arch: str) -> str:
    """Which recipe layer an architecture takes: ``vit`` for ViTs, ``rn`` for ResNets."""
    return "vit" if "vit" in arch.lower() else "rn"


def resolve_preset(name_or_path: str) -> Path:
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") and p.exists():
        return p
    cand = PRESET_DIR / f"{name_or_path}.yaml"
    if cand.exists():
        return cand
    raise ConfigError(f"config {name_or_path!r}: no such file and no preset of that name; presets: {', '.join(list_presets())}")


def load_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a UTF-8 text file; expected a YAML mapping of config sections") from None
    except yaml.YAMLError as e:
        where = getattr(e, "problem_mark", None)
        at = f" at line {where.line + 1}, column {where.column + 1}" if where is not None else ""
        raise ConfigError(f"{path}: not valid YAML{at} ({getattr(e, 'problem', None) or str(e).splitlines()[0]})") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read ({e.strerror})") from None
    if data is None:
        raise ConfigError(f"{path}: the file is empty; expected a mapping of config sections")
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a YAML mapping of config sections, got {type(data).__name__}")
    return data


def load_config(preset: str | None = None, overrides: list[str] | tuple[str, ...] = (), variant: str | None = None,
                backbone: str | None = None) -> Config:
    """Defaults <- backbone recipe YAML <- preset YAML <- variant YAML <- ``key=value`` overrides.

    The backbone layer (``configs/backbones/rn.yaml`` or ``vit.yaml``, CLIP-ReID's two recipes) is
    chosen from the architecture the preset and overrides name, unless ``backbone`` is given.
    """
    preset_data: dict[str, Any] = {}
    path = None
    if preset:
        path = resolve_preset(preset)
        preset_data = load_yaml(path)
    if backbone is None:
        probe = merge_dict(Config(), preset_data, str(path))
        apply_overrides(probe, [o for o in overrides if o.strip().startswith("model.arch=")])
        backbone = backbone_of(probe.model.arch)
    bpath = PRESET_DIR / "backbones" / f"{backbone}.yaml"
    if not bpath.exists():
        raise ConfigError(f"backbone {backbone!r} unknown; backbones: {', '.join(list_backbones())}")
    cfg = merge_dict(Config(), load_yaml(bpath), str(bpath))
    merge_dict(cfg, preset_data, str(path))
    if variant:
        vpath = PRESET_DIR / "variants" / f"{variant}.yaml"
        if not vpath.exists():
            raise ConfigError(f"variant {variant!r} unknown; variants: {', '.join(list_variants())}")
        merge_dict(cfg, load_yaml(vpath), str(vpath))
    apply_overrides(cfg, overrides)
    return cfg


def validate_config(cfg: Config, weights: bool = True) -> Config:
    """Everything a run (both stages and evaluation) will need, checked before the first step. ``weights``: also
    the CLIP weights setting (not for evaluating a checkpoint, which carries its own)."""
    import math
    import re

    for section in _field_types(Config):
        sub = getattr(cfg, section)
        for key, typ in _field_types(type(sub)).items():
            v = getattr(sub, key)
            vals = v if isinstance(v, list) else [v]
            if any(isinstance(x, float) and not math.isfinite(x) for x in vals):
                raise ConfigError(f"{section}.{key}={v}: expected a finite number")
    positive = ["stage1.epochs", "stage1.batch_size", "stage2.epochs", "stage2.batch_size", "data.num_instances",
                "data.height", "data.width", "eval.batch_size", "eval.chunk", "model.n_ctx", "run.checkpoint_every",
                "stage1.lr", "stage2.lr", "stage2.cal_lr", "stage1.temperature", "data.prcc_trials", "stage2.i2t_scale",
                "stage2.gate_lr_factor", "run.sync_every"]
    def get(dotted: str) -> Any:
        section, key = dotted.split(".")
        return getattr(getattr(cfg, section), key)

    for dotted in positive:
        if not get(dotted) > 0:
            raise ConfigError(f"{dotted}={get(dotted)}: expected a positive value")
    non_negative = ["stage1.weight_decay", "stage2.weight_decay", "stage1.warmup_epochs", "stage2.warmup_epochs",
                    "data.workers", "data.padding", "stage2.id_weight", "stage2.triplet_weight", "stage2.i2t_weight",
                    "stage2.cal_weight", "stage1.lambda1", "stage1.lambda2", "run.checkpoint_steps",
                    "run.max_steps_per_epoch", "stage1.warmup_lr", "stage1.min_lr"]
    for dotted in non_negative:
        if get(dotted) < 0:
            raise ConfigError(f"{dotted}={get(dotted)}: expected a value >= 0")
    # learning rates and loss weights that cannot train anything sensible: refused before any file is written
    for dotted in ("stage1.lr", "stage2.lr", "stage2.cal_lr", "stage1.warmup_lr", "stage1.min_lr"):
        if get(dotted) > 1.0:
            raise ConfigError(f"{dotted}={get(dotted)}: expected a learning rate <= 1 (CLIP-ReID uses 3.5e-4)")
    if cfg.stage2.lr * cfg.stage2.gate_lr_factor > 1.0:
        raise ConfigError(f"stage2.gate_lr_factor={cfg.stage2.gate_lr_factor}: the gate's lr "
                          f"{cfg.stage2.lr * cfg.stage2.gate_lr_factor:g} would exceed 1")
    if cfg.stage2.triplet_margin < 0:
        raise ConfigError(f"stage2.triplet_margin={cfg.stage2.triplet_margin}: expected a margin >= 0")
    if cfg.stage2.cal_start_epoch < 0:
        raise ConfigError(f"stage2.cal_start_epoch={cfg.stage2.cal_start_epoch}: expected an epoch >= 0")
    if cfg.stage2.cal_classifier_start_epoch < -1:
        raise ConfigError(f"stage2.cal_classifier_start_epoch={cfg.stage2.cal_classifier_start_epoch}: expected an "
                          f"epoch >= 0, or -1 (with the adversarial loss)")
    for dotted in ("stage1.epochs", "stage2.epochs"):
        if get(dotted) > 100_000:
            raise ConfigError(f"{dotted}={get(dotted)}: expected at most 100000 epochs")
    for dotted in ("data.height", "data.width"):
        if get(dotted) > 4096:
            raise ConfigError(f"{dotted}={get(dotted)}: expected at most 4096 pixels")
    for dotted in ("data.flip_prob", "data.erasing_prob", "stage2.label_smoothing", "stage2.cal_epsilon"):
        if not 0 <= get(dotted) < 1 + dotted.endswith("prob"):
            raise ConfigError(f"{dotted}={get(dotted)}: expected a value in [0, 1]")
    if cfg.stage2.eval_every < 0:
        raise ConfigError(f"stage2.eval_every={cfg.stage2.eval_every}: expected a value >= 0 (0: no evaluation during "
                          "training)")
    for dotted in ("stage2.lr_gamma", "model.sim_heads"):
        if not get(dotted) > 0:
            raise ConfigError(f"{dotted}={get(dotted)}: expected a positive value")
    for dotted in ("run.seed", "run.stop_after_steps"):
        if get(dotted) < 0:
            raise ConfigError(f"{dotted}={get(dotted)}: expected a value >= 0")
    if cfg.run.seed >= 2 ** 31:
        raise ConfigError(f"run.seed={cfg.run.seed}: expected a value below 2**31")
    if not 0 < cfg.stage2.warmup_factor <= 1:
        raise ConfigError(f"stage2.warmup_factor={cfg.stage2.warmup_factor}: expected a value in (0, 1]")
    if cfg.stage2.batch_size % cfg.data.num_instances:
        raise ConfigError(f"stage2.batch_size={cfg.stage2.batch_size}: must be a multiple of data.num_instances="
                          f"{cfg.data.num_instances} (P identities x K images)")
    if any(m <= 0 for m in cfg.stage2.milestones) or cfg.stage2.milestones != sorted(cfg.stage2.milestones):
        raise ConfigError(f"stage2.milestones={cfg.stage2.milestones}: expected increasing positive epochs")
    if len(cfg.data.pixel_mean) != 3 or len(cfg.data.pixel_std) != 3 or min(cfg.data.pixel_std) <= 0:
        raise ConfigError("data.pixel_mean / data.pixel_std: expected 3 values each, std > 0")
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", cfg.run.device):
        raise ConfigError(f"run.device={cfg.run.device!r}: expected auto, cpu, cuda or cuda:N")
    from .models.backbone import input_multiple, list_models
    if cfg.model.arch not in list_models():
        raise ConfigError(f"model.arch={cfg.model.arch!r} unknown; available: {', '.join(list_models())}")
    mult = input_multiple(cfg.model.arch)
    if cfg.data.height % mult or cfg.data.width % mult:
        raise ConfigError(f"data.height={cfg.data.height} data.width={cfg.data.width}: {cfg.model.arch} needs both to be "
                          f"multiples of {mult}")
    from .models.backbone import model_config
    ctx_len = model_config(cfg.model.arch)["text_cfg"].get("context_length", 77)
    if cfg.model.n_ctx + 8 > ctx_len:  # SOS + "A photo of the" + n_ctx + "clothes." + EOS
        raise ConfigError(f"model.n_ctx={cfg.model.n_ctx}: the prompt would not fit {cfg.model.arch}'s {ctx_len} text "
                          f"tokens; expected at most {ctx_len - 8}")
    if cfg.run.device.startswith("cuda"):
        import torch
        if not torch.cuda.is_available():
            raise ConfigError(f"run.device={cfg.run.device}: no CUDA device on this machine; use auto or cpu")
        idx = int(cfg.run.device.split(":")[1]) if ":" in cfg.run.device else 0
        if idx >= torch.cuda.device_count():
            raise ConfigError(f"run.device={cfg.run.device}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if weights:
        from .models.weights import check_weights_setting
        check_weights_setting(cfg.model.weights, cfg.model.arch)
    return cfg


def apply_overrides(cfg: Config, overrides: list[str] | tuple[str, ...]) -> Config:
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected section.key=value")
        key, value = item.split("=", 1)
        set_value(cfg, key.strip(), value.strip())
    return cfg


def config_from_dict(data: dict[str, Any]) -> Config:
    return merge_dict(Config(), data, "saved config")


def save_config(cfg: Config, path: str | Path) -> None:
    from .durable import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False))


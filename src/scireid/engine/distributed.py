"""Device and process-group handling: CPU, one GPU, or DDP under torchrun (NCCL on GPU, gloo on CPU)."""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


@dataclass
class DistContext:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1


def resolve_device(device: str | None, what: str = "--device") -> torch.device:
    """auto/None, cpu, cuda or cuda:N, checked against what this machine has: one line otherwise."""
    import re

    from ..errors import ConfigError
    device = device or "auto"
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", device):
        raise ConfigError(f"{what} {device}: expected auto, cpu, cuda or cuda:N")
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"{what} {device}: no CUDA device is visible; use cpu")
        if ":" in device and int(device.split(":")[1]) >= torch.cuda.device_count():
            raise ConfigError(f"{what} {device}: only {torch.cuda.device_count()} CUDA device(s) are visible")
    return torch.device(device)


def setup(device: str = "auto") -> DistContext:
    """Read torchrun's environment; start the process group once."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            from ..errors import ConfigError
            raise ConfigError(f"run.device={device}: no CUDA device is visible; use run.device=cpu")
        dev = torch.device(f"cuda:{local}") if world > 1 or device == "cuda" else torch.device(device)
        torch.cuda.set_device(dev)
    else:
        dev = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo", rank=rank, world_size=world)
    return DistContext(rank, world, local, dev)


def gather_with_grad(x: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """All ranks' rows, in rank order; gradients flow back to each rank's own rows."""
    if not ctx.enabled:
        return x
    import torch.distributed.nn.functional as dnn
    return torch.cat(dnn.all_gather(x), dim=0)


def gather_rows(x: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """Non-differentiable gather of equally sized row blocks."""
    if not ctx.enabled:
        return x
    out = [torch.empty_like(x) for _ in range(ctx.world)]
    dist.all_gather(out, x.contiguous())
    return torch.cat(out)


def all_reduce_mean_grads(params, ctx: DistContext) -> None:
    if not ctx.enabled:
        return
    for p in params:
        if p.grad is not None:
            dist.all_reduce(p.grad)
            p.grad /= ctx.world


class DistBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm with statistics over all ranks, on CPU (gloo) as well as GPU.

    torch's SyncBatchNorm refuses CPU tensors; this uses the differentiable all_reduce so the
    gradient matches one process on the whole batch.
    """

    def _check_input_dim(self, x):  # any N, C, ... layout
        if x.dim() < 2:
            raise ValueError(f"expected at least 2D input, got {x.dim()}D")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        import torch.distributed.nn.functional as dnn

        dims = [0] + list(range(2, x.dim()))
        n_local = torch.tensor([x.numel() / x.shape[1]], dtype=torch.float64 if x.dtype == torch.float64 else torch.float32,
                               device=x.device)
        xf = x.float()
        stats = torch.cat([xf.sum(dims), (xf * xf).sum(dims), n_local.float()])
        stats = dnn.all_reduce(stats)
        c = x.shape[1]
        n = stats[-1]
        mean = stats[:c] / n
        var = stats[c:2 * c] / n - mean * mean
        with torch.no_grad():
            m = self.momentum
            self.running_mean.mul_(1 - m).add_(m * mean.detach())
            self.running_var.mul_(1 - m).add_(m * var.detach() * n / (n - 1))
            self.num_batches_tracked += 1
        shape = [1, c] + [1] * (x.dim() - 2)
        y = (xf - mean.view(shape)) / torch.sqrt(var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y.to(x.dtype)


def convert_batchnorm(module: nn.Module) -> nn.Module:
    """Swap every BatchNorm for DistBatchNorm, keeping parameters, buffers and requires_grad."""
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, DistBatchNorm):
        new = DistBatchNorm(module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats)
        new.load_state_dict(module.state_dict())
        if module.affine:
            new.weight.requires_grad_(module.weight.requires_grad)
            new.bias.requires_grad_(module.bias.requires_grad)
        new.train(module.training)
        return new
    for name, child in module.named_children():
        module._modules[name] = convert_batchnorm(child)
    return module


def barrier(ctx: DistContext) -> None:
    if ctx.enabled:
        dist.barrier()


def broadcast_object(obj, ctx: DistContext):
    if not ctx.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]

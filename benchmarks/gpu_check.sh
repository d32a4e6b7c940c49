#!/usr/bin/env bash
# GPU checks and timings, run on a lent GPU machine (see BENCHMARKS.md). Never needed by tests.
# Usage there: bash benchmarks/gpu_check.sh [PART ...]   (expects open_clip/ftfy wheels in .whl/ if not installed)
#   issue26      the fewest minutes that answer issue #26's first criterion: SCI end to end on an LTCC-sized
#                tree (device augmentation), eager and with --compile reduce-overhead: stage-2 images/s,
#                --compile against eager, and the whole LTCC schedule projected                  ~5 min
#   speed        no host-device sync in the steps, device augmentation vs PIL on the GPU, the stage-2 step
#                (eager), the end-to-end run on an LTCC-sized tree with the whole LTCC schedule projected
#                (issue #26's figures)                                                            ~9 min
#   compile      the stage-2 step with --compile, default and reduce-overhead (CUDA graphs) modes  ~6 min
#   compile-e2e  the end-to-end run and the LTCC projection with --compile reduce-overhead (both
#                stages compiled), device augmentation                                            ~8 min
#   smoke        train, eval and embed a tiny model end to end on CUDA                            ~2 min
# No PART: speed, compile, smoke. Each part fits a 10-minute command on its own.
set -u
OUT=${OUT:-/tmp/gpu_out}; mkdir -p "$OUT"
PARTS=${*:-speed compile smoke}
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD/src:${PYTHONPATH:-}" PYTHONUNBUFFERED=1
{ nvidia-smi -L; python3 -c "import torch, open_clip; print('torch', torch.__version__, 'open_clip', open_clip.__version__, torch.cuda.get_device_name(0))"; } 2>&1 | tee "$OUT/env.txt"
for part in $PARTS; do
  case $part in
  speed)
    echo "== no host-device sync in the training steps; device augmentation against the PIL path"
    timeout 120 python3 benchmarks/device_checks.py 2>&1 | tee "$OUT/device_checks.txt" | tail -14
    echo "== train step (bf16, batch 64)"
    timeout 120 python3 benchmarks/train_step.py --device cuda --no-write 2>&1 | tee "$OUT/train_step.txt" | tail -12
    echo "== end-to-end training speed (LTCC-sized tree, baseline and SCI, loader / trunk / step / stages, memory)"
    timeout 330 python3 benchmarks/train_e2e.py --device cuda --steps 30 --no-write 2>&1 | tee "$OUT/train_e2e.txt" | tail -22
    ;;
  compile)
    echo "== train step with --compile"
    timeout 170 python3 benchmarks/train_step.py --device cuda --compile --no-write 2>&1 | tee "$OUT/train_step_compile.txt" | tail -8
    echo "== train step with --compile --compile-mode reduce-overhead (CUDA graphs)"
    timeout 200 python3 benchmarks/train_step.py --device cuda --compile --compile-mode reduce-overhead --no-write 2>&1 | tee "$OUT/train_step_graphs.txt" | tail -8
    ;;
  issue26)
    echo "== SCI end to end, eager, then --compile reduce-overhead (LTCC-sized tree, data.device_augment)"
    [ -d /tmp/e2e_tree ] || python3 -c "import sys; sys.path.insert(0, 'benchmarks'); from pathlib import Path
from train_e2e import make_ltcc_tree; make_ltcc_tree(Path('/tmp/e2e_tree'), 9576, 493, 7050)"
    timeout 150 python3 benchmarks/train_e2e.py --device cuda --tree /tmp/e2e_tree --steps 30 --variants full \
      --runs-only --loaders dev --no-write 2>&1 | tee "$OUT/issue26_eager.txt" | tail -8
    TORCH_LOGS="recompiles,graph_breaks,perf_hints" timeout 390 python3 benchmarks/train_e2e.py --device cuda \
      --tree /tmp/e2e_tree --steps 30 --variants full --runs-only --loaders dev --compile reduce-overhead --no-write 2>&1 \
      | tee "$OUT/issue26_graphs.txt" | tail -8
    ;;
  compile-e2e)
    echo "== end-to-end training speed with --compile reduce-overhead (stage 1's text encoder, stage 2's trunk)"
    TORCH_LOGS="recompiles,graph_breaks,perf_hints" timeout 540 python3 benchmarks/train_e2e.py --device cuda --steps 30 --compile reduce-overhead --loaders dev \
      --no-write 2>&1 | tee "$OUT/train_e2e_graphs.txt" | tail -16
    ;;
  smoke)
    echo "== end-to-end smoke on cuda"
    timeout 60 python3 -m scireid.cli synth /tmp/gsyn --ids 16 --seed 1 > "$OUT/smoke.txt" 2>&1
    timeout 120 python3 -m scireid.cli train synthetic --out /tmp/grun data.root=/tmp/gsyn run.device=cuda stage1.epochs=2 stage2.epochs=3 stage2.eval_every=1 stage2.cal_start_epoch=1 >> "$OUT/smoke.txt" 2>&1
    echo "train rc=$?" | tee -a "$OUT/smoke.txt"
    timeout 60 python3 -m scireid.cli eval /tmp/grun --json run.device=cuda >> "$OUT/smoke.txt" 2>&1; echo "eval rc=$?" | tee -a "$OUT/smoke.txt"
    timeout 60 python3 -c "
import scireid, glob, torch
m = scireid.load('/tmp/grun', device='cuda'); f = m.embed(sorted(glob.glob('/tmp/gsyn/query/*.png'))[:5])
print('embed', tuple(f.shape), f.dtype, float(f.norm(dim=1).min()), float(f.norm(dim=1).max()))" 2>&1 | tee -a "$OUT/smoke.txt"
    grep -E "stage2 epoch|general|cloth" "$OUT/smoke.txt" | tail -6
    ;;
  *) echo "unknown part: $part (expected issue26, speed, compile, compile-e2e or smoke)"; exit 2 ;;
  esac
done

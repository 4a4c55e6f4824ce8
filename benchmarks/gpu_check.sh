#!/usr/bin/env bash
# What only a GPU can show, in one command meant to take a few minutes (not yet timed on a GPU;
# no network, nothing but the project):
#   1. the CUDA-marked tests: every family trains, samples, evaluates with --device auto; exact resume
#      (CUDA RNG state included); a GPU checkpoint resumes on the CPU
#   2. one JSON line each: the DDPM seed config at batch 256 through `genlab train` beside the bare compiled
#      step; the seed GAN for 30 epochs; NCSN text:CS446 for 10,000 steps; 10,000 DDPM samples of MNIST (T = 50);
#      both stages of an MNIST ldm (600 steps each)
#
#   bash benchmarks/gpu_check.sh            # over an installed CUDA torch: the project is used from the tree
#   QUICK=1 DEVICE=cpu bash benchmarks/gpu_check.sh   # the same steps, tiny, to check the script itself
#
# MNIST is looked up in $GENLAB_DATA, ../shared/data/mnist and .gpu-data/mnist; the GAN and sampling lines say
# "skipped" without it.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" GENLAB_OFFLINE=1 MPLBACKEND=Agg
PY=${PYTHON:-python}
DEVICE=${DEVICE:-cuda}
QUICK=${QUICK:-0}
OUT=${OUT:-$(mktemp -d)}
mkdir -p "$OUT"

MNIST=""
for d in "${GENLAB_DATA:-}/mnist" "${GENLAB_DATA:-}" ../shared/data/mnist .gpu-data/mnist; do
    [ -n "$d" ] && [ -f "$d/train-images-idx3-ubyte.gz" ] && MNIST=$d && break
done

"$PY" - <<'EOF'
import json, torch
info = {"check": "environment", "torch": torch.__version__, "cuda": torch.cuda.is_available()}
if torch.cuda.is_available():
    info.update(gpu=torch.cuda.get_device_name(), capability=".".join(map(str, torch.cuda.get_device_capability())))
print(json.dumps(info), flush=True)
EOF

# 1. the CUDA tests (they skip themselves without a GPU)
timeout 300 "$PY" -m pytest -q -p no:cacheprovider -m cuda tests/test_accelerator.py 2>&1 | tail -n 15

if [ "$QUICK" = 1 ]; then LOOP_STEPS=40; BATCH=32; GAN_EPOCHS=1; NCSN_STEPS=50; NSAMPLES=64; else
    LOOP_STEPS=600; BATCH=256; GAN_EPOCHS=30; NCSN_STEPS=10000; NSAMPLES=10000; fi
COMPILE=${COMPILE:-$([ "$QUICK" = 1 ] && echo 0 || echo 1)}  # compiling on a CPU takes minutes

# 2a. DDPM seed config, batch 256 (QUICK: 32): the real loop, eager and compiled, beside the bare compiled step
timeout 240 "$PY" benchmarks/train_loop.py --device "$DEVICE" --batch-size "$BATCH" --steps "$LOOP_STEPS" --log-every 10
timeout 300 "$PY" benchmarks/train_loop.py --device "$DEVICE" --batch-size "$BATCH" --steps "$LOOP_STEPS" --log-every 10 \
    --compile "$COMPILE" --bare 1

# training seconds of a run, from its own metrics (start-up and the end-of-run work excluded)
elapsed() {
    "$PY" - "$1" "$2" <<'EOF'
import json, sys
from pathlib import Path
from genlab.trainer import read_metrics
run, what = sys.argv[1], sys.argv[2]
train = [r for r in read_metrics(Path(run) / "metrics.jsonl") if r["split"] == "train"]
print(json.dumps({"check": what, "steps": train[-1]["step"], "train_s": round(train[-1]["elapsed"], 2),
                  "steps_per_s": round(train[-1]["step"] / train[-1]["elapsed"], 1)}), flush=True)
EOF
}

# 2b. seed GAN, 30 epochs (7,020 steps at batch 256)
if [ -n "$MNIST" ]; then
    timeout 300 "$PY" -m genlab train gan --data-dir "$MNIST" --epochs "$GAN_EPOCHS" --device "$DEVICE" \
        --progress false --out "$OUT/gan" >"$OUT/gan.log" 2>&1 || tail -n 5 "$OUT/gan.log"
    elapsed "$OUT/gan" "gan seed 002, $GAN_EPOCHS epochs"
else
    echo '{"check": "gan seed 002", "skipped": "no MNIST files"}'
fi

# 2c. NCSN on text:CS446, 10,000 steps
timeout 200 "$PY" -m genlab train ncsn --steps "$NCSN_STEPS" --device "$DEVICE" --progress false \
    --out "$OUT/ncsn" >"$OUT/ncsn.log" 2>&1 || tail -n 5 "$OUT/ncsn.log"
elapsed "$OUT/ncsn" "ncsn text:CS446, $NCSN_STEPS steps"

# 2d. 10,000 samples of an MNIST DDPM at T = 50 (a short run: the time does not depend on the weights)
if [ -n "$MNIST" ]; then
    timeout 200 "$PY" -m genlab train ddpm --dataset mnist --data-dir "$MNIST" --steps 20 --final-eval-n 8 \
        --device "$DEVICE" --progress false --out "$OUT/ddpm" >"$OUT/ddpm.log" 2>&1 || tail -n 5 "$OUT/ddpm.log"
    timeout 200 "$PY" -m genlab sample "$OUT/ddpm" --n 16 --device "$DEVICE" -o "$OUT/samples.png" \
        >/dev/null 2>"$OUT/sample.log" || tail -n 5 "$OUT/sample.log"  # the command line works
    timeout 200 "$PY" - "$OUT/ddpm" "$NSAMPLES" "$DEVICE" <<'PYEOF'
import json, sys, time
import torch
import genlab
from genlab.device import resolve_device
run, n, device = sys.argv[1], int(sys.argv[2]), str(resolve_device(sys.argv[3]))
model = genlab.load(run, device=device)
genlab.sample(model, 64)  # warm-up: cuDNN picks its kernels
if device.startswith("cuda"):
    torch.cuda.synchronize()
t0 = time.perf_counter()
x = genlab.sample(model, n)
if device.startswith("cuda"):
    torch.cuda.synchronize()
print(json.dumps({"check": f"ddpm mnist samples, T = {model.diffusion.T}", "n": n, "shape": list(x.shape),
                  "sample_s": round(time.perf_counter() - t0, 2)}), flush=True)
PYEOF
else
    echo '{"check": "ddpm mnist samples", "skipped": "no MNIST files"}'
fi

# 2e. latent diffusion on MNIST: the training img/s of each stage (autoencoder, then the latent U-Net)
if [ -n "$MNIST" ]; then
    if [ "$QUICK" = 1 ]; then LDM_STEPS=20; else LDM_STEPS=600; fi
    timeout 240 "$PY" -m genlab train ldm --dataset mnist --data-dir "$MNIST" --steps "$LDM_STEPS" \
        --batch-size "$BATCH" --ae-batch-size "$BATCH" --final-eval-n 8 --device "$DEVICE" --progress false \
        --out "$OUT/ldm" >"$OUT/ldm.log" 2>&1 || tail -n 5 "$OUT/ldm.log"
    "$PY" - "$OUT/ldm" <<'PYEOF'
import json, sys
from pathlib import Path
from genlab.trainer import read_metrics
run = Path(sys.argv[1])
rate = lambda p: [r for r in read_metrics(p) if r["split"] == "train"][-1]["img_per_s"]  # noqa: E731
print(json.dumps({"check": "ldm mnist, img/s of each stage", "autoencoder": round(rate(run / "autoencoder" / "metrics.jsonl"), 1),
                  "latent_unet": round(rate(run / "metrics.jsonl"), 1)}), flush=True)
PYEOF
else
    echo '{"check": "ldm mnist", "skipped": "no MNIST files"}'
fi

#!/usr/bin/env bash
# The GPU check of the training wing (issue 12): on ONE GPU, a randomly initialised Qwen2.5-0.5B-shaped model (no hub
# access) with SID tokens goes through a few SFT steps under bf16 (DeepSpeed ZeRO-2 when deepspeed is installed), their
# resume from `last` for one more step, a few GRPO steps (rollouts under bf16 autocast, TF32 on: issue 23), and the
# evaluation of 256 users at 50 beams; it prints tokens/s, seconds per step, peak GPU memory, whether the resume
# continued, and ms/user of our beam search vs `generate` + the reference's per-beam processor (bench/decoding.py).
# Budget: 8 minutes. Not yet run on a GPU (no GPU was lent to the session of issue 23).
#
#   bash bench/gpu_check.sh              # on the GPU machine, from the repository root or anywhere
#   bash bench/gpu_check.sh --tiny       # CPU smoke test of the same code (tests/test_gpu_check.py), seconds
#
# Results: one line per phase on stdout and <out>/{sft,grpo,eval}.json, out = $OUT (the device tool's output folder)
# or a temporary folder.
#
# Wheels the GPU machine lacks (it has no network): the package's runtime needs (e.g. faiss-cpu) and, optionally,
# deepspeed (ZeRO-2) and trl (not used here) are installed from a wheel folder carried with the working tree:
#   on a connected machine:  pip download --only-binary=:all: --no-deps -d bench/wheels faiss-cpu deepspeed
#                            (deepspeed is a source distribution: `pip wheel --no-deps -w bench/wheels deepspeed`)
#   then carry bench/wheels (e.g. the device tool's `carry: ["bench/wheels"]`); MINIONEREC_WHEELS points elsewhere.
# Without deepspeed the SFT phase runs plain bf16 autocast with fp32 master weights (the DDP path) and says so.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" OMP_WAIT_POLICY=PASSIVE TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1
TINY=0; for a in "$@"; do [ "$a" = "--tiny" ] && TINY=1; done
OUT_DIR=${OUT:-$(mktemp -d)}
WHEELS=${MINIONEREC_WHEELS:-bench/wheels}
if [ -d "$WHEELS" ] && ls "$WHEELS"/*.whl >/dev/null 2>&1; then
  echo "gpu_check: installing carried wheels from $WHEELS"
  python -m pip install -q --no-index --find-links "$WHEELS" "$WHEELS"/*.whl
fi
for m in faiss deepspeed trl; do python -c "import $m" 2>/dev/null || echo "gpu_check: $m not installed (carry its wheel, see the header)"; done
start=$(date +%s)
has_gpu=$(python -c "import torch; print(int(torch.cuda.is_available()))")
if [ "$TINY" = 0 ] && [ "$has_gpu" = 1 ] && python -c "import deepspeed" 2>/dev/null; then
  echo "gpu_check: SFT under DeepSpeed ZeRO-2 (configs/deepspeed_zero2.json), one process"
  ACCELERATE_USE_DEEPSPEED=true ACCELERATE_DEEPSPEED_CONFIG_FILE=configs/deepspeed_zero2.json \
    timeout 300 torchrun --standalone --nproc_per_node 1 bench/gpu_check.py --phase sft,resume --out "$OUT_DIR"
  timeout $((480 - $(date +%s) + start)) python bench/gpu_check.py --phase grpo,eval --out "$OUT_DIR"
else
  [ "$TINY" = 1 ] || echo "gpu_check: no deepspeed or no GPU: SFT runs bf16 autocast with fp32 master weights"
  timeout 480 python bench/gpu_check.py --phase all --out "$OUT_DIR" "$@"
fi
took=$(( $(date +%s) - start ))
echo "gpu_check: done in ${took}s (budget 480s); results in $OUT_DIR"
[ "$took" -le 480 ]

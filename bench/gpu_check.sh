#!/usr/bin/env bash
# GPU check in one go (a few minutes on one H100/H200): LISA's step time and peak CUDA memory against the baseline
# (bench_train.py on cuda at two batch sizes), then bf16 end-to-end runs on the GPU for the UNet (v-prediction) and
# the DiT (flow): pretrain -> train with LISA -> extract.
#
#     bash bench/gpu_check.sh [--no-bench] [OUT_DIR]       (default runs/gpu-check; --no-bench: end-to-end runs only)
set -euo pipefail
batches="16 64"
out=runs/gpu-check
for arg in "$@"; do
  case "$arg" in
    --no-bench) batches="" ;;
    -*) echo "gpu_check.sh: unknown option $arg (allowed: --no-bench)" >&2; exit 2 ;;
    *) out=$arg ;;
  esac
done
mkdir -p "$out"
python -c "import torch; print(torch.__version__, torch.cuda.get_device_name(0))" | tee "$out/device.txt"
for batch in $batches; do
  python bench/bench_train.py --device cuda --batch-size "$batch" --repeats 20 --warmup 5 | tee "$out/bench_train_b$batch.md"
done
for backbone in unet dit; do
  prediction=$([ "$backbone" = unet ] && echo v || echo flow)
  python -m lisa_probe.pretrain --backbone "$backbone" --preset tiny --prediction-type "$prediction" --resolution 16 \
    --steps 100 --eval-every 0 --mixed-precision bf16 --out-dir "$out" --name "main-$backbone"
  python -m lisa_probe.train --main "$out/main-$backbone" --steps 60 --eval-every 30 --eval-samples 32 \
    --mixed-precision bf16 --lisa-weight 0.2 --out-dir "$out" --name "side-$backbone"
  python -m lisa_probe.extract --ckpt "$out/side-$backbone" --out "$out/features-$backbone.h5" --samples 32 \
    --timesteps 2
  python -c "import h5py, sys; f = h5py.File(sys.argv[1]); print(sys.argv[1], {k: v.shape for k, v in f['features'].items()})" \
    "$out/features-$backbone.h5"
  cat "$out/side-$backbone/summary.json"
done

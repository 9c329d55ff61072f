#!/usr/bin/env bash
# README's GPU figures measured again, each command with its wall time: the three ResNet-18 epoch-speed commands
# and the r18_fast time-to-accuracy run, exactly as README prints them. Run from the repository root on a CUDA
# machine; the outputs and wall times go to the terminal and to LOG (default runs/gpu_figures.log). The last step
# makes runs/gpu/r18_fast and, like any exercise1 run, refuses to replace one that exists.
# Usage: bash bench/gpu_figures.sh CIFAR_JPEG_ROOT [LOG]   (packs the JPEG folder into cifar-packed/ if absent)
# EXTRA_BENCH / EXTRA_RUN: flags appended to the benchmark / training commands (the later flag wins), for a short
# trial run anywhere, e.g. EXTRA_BENCH="--subset 512 --repeats 1" EXTRA_RUN="--subset 512 --epochs 1 --save_dir /tmp/g"
set -euo pipefail
ROOT=${1:?usage: bash bench/gpu_figures.sh CIFAR_JPEG_ROOT [LOG]}
LOG=${2:-runs/gpu_figures.log}
export PYTHONUNBUFFERED=1
mkdir -p "$(dirname "$LOG")"
read -r -a XB <<< "${EXTRA_BENCH:-}"
read -r -a XR <<< "${EXTRA_RUN:-}"

timed() {  # prints the command, runs it (progress bars left out), then its exit code and wall time
    local start=$EPOCHSECONDS rc
    echo "\$ $*" | tee -a "$LOG"
    set +e
    "$@" 2>&1 | grep -v -e "it/s" -e "s/it" | tee -a "$LOG"
    rc=${PIPESTATUS[0]}
    set -e
    echo "# exit code $rc, wall time $((EPOCHSECONDS - start)) s" | tee -a "$LOG"
    return "$rc"  # a failed step stops the script (set -e)
}

{ nvidia-smi -L 2>/dev/null || echo "no GPU seen by nvidia-smi"; } | tee -a "$LOG"
python -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())" | tee -a "$LOG"
[ -d cifar-packed/cifar-10-batches-py ] || timed python bench/pack_cifar.py "$ROOT" cifar-packed
B=(python bench/epoch_speed.py --dataset cifar10 --data_root cifar-packed --model resnet18 --augment)
timed "${B[@]}" --repeats 2 --batch_size 512 --num_workers 12 "${XB[@]}"
timed "${B[@]}" --repeats 3 --batch_size 512 --compile --loaders tensor bare "${XB[@]}"
timed "${B[@]}" --repeats 3 --batch_size 512 --loaders tensor bare "${XB[@]}"
timed python exercise1.py --model resnet18 --dataset cifar10 --data_root cifar-packed --epochs 30 --batch_size 512 \
    --optimizer sgd --lr 0.2 --weight_decay 5e-4 --scheduler onecycle --label_smoothing 0.1 --val_split 0 \
    --compile --wandb disabled --save_dir runs/gpu --run_name r18_fast "${XR[@]}"

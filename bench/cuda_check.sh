#!/usr/bin/env bash
# CUDA smoke and speed check: GPU-resident data, bf16/fp16 autocast, channels_last, torch.compile, distillation.
# Usage: bash bench/cuda_check.sh MNIST_ROOT   (CIFAR-format data are synthesised: timings only, not accuracy)
set -euxo pipefail
MNIST=${1:-./data}
export PYTHONUNBUFFERED=1
nvidia-smi -L
python3 -c "import torch; print(torch.__version__, torch.cuda.get_device_name())"
python3 -c "import sys; sys.path.insert(0, 'tests'); from conftest import write_cifar; write_cifar('/tmp/cif', n_train=50000, n_test=10000)"
python3 exercise1.py --data_root "$MNIST" --epochs 3 --wandb disabled --save_dir /tmp/r --norm 2>&1 | grep -v "it/s"
python3 exercise1.py --model resnet20 --dataset cifar10 --data_root /tmp/cif --epochs 2 --amp fp16 --compile --wandb disabled --save_dir /tmp/r 2>&1 | grep -v "it/s"
python3 exercise2.py --data_root /tmp/cif --subset 5000 --epochs 1 --teacher resnet20 --student FlexibleCNN --s_layers 1 1 1 --s_width 16 --cache_teacher --wandb disabled --save_dir /tmp/r 2>&1 | grep -v "it/s"
python3 bench/epoch_speed.py --dataset mnist --data_root "$MNIST" --repeats 3 --num_workers 8 2>&1 | grep -v "it/s"
python3 bench/epoch_speed.py --dataset cifar10 --data_root /tmp/cif --model resnet18 --augment --repeats 2 --num_workers 8 2>&1 | grep -v "it/s"
python3 bench/epoch_speed.py --dataset cifar10 --data_root /tmp/cif --model resnet18 --augment --repeats 2 --compile --loaders tensor 2>&1 | grep -v "it/s"

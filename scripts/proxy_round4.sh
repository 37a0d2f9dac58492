#!/usr/bin/env bash
# Issue 16's recipe search, round 4: configs/proxy-zca.yaml (best.yaml's recipe at 1024 units
# and 12 epochs) with one knob changed at a time. Every variant trains at seed 42, so it shares
# the baseline's initialisation and batch order (a paired comparison); the baseline's own
# 3-seed spread is the yardstick. Validation only (the proxy has no test split).
#   bash scripts/proxy_round4.sh [OUT]      # 17 networks, about 30 minutes on 2 cores
set -euo pipefail
out=${1:-runs/proxy-r4}
cfg=configs/proxy-zca.yaml
run() { local name=$1; shift; cifar2l train "$cfg" --out "$out" --name "$name" --quiet "$@"; }
cifar2l train "$cfg" --out "$out" --name baseline-3seeds --repeat 3 --quiet
run baseline
run translate2 --set augment.translate=2
run translate4 --set augment.translate=4
run contrast02 --set augment.contrast=0.2
run warmup005 --set schedule.warmup=0.05
run warmup025 --set schedule.warmup=0.25
run lambda1e-4 --set optim.lambda=0.0001
run lambda5e-4 --set optim.lambda=0.0005
run batch64 --set train.batch_size=64 --set schedule.steps=8424 --set train.log_every=8424
run batch256 --set train.batch_size=256 --set schedule.steps=2106 --set train.log_every=2106
# Width against epochs at the same compute (updates x width): best.yaml's 4096 x 60 epochs
# against 6144 x 40 and 8192 x 30, at a quarter of the width and a fifth of the epochs.
run width1536 --set model.hidden=1536 --set schedule.steps=2808 --set train.log_every=2808
run width2048 --set model.hidden=2048 --set schedule.steps=2106 --set train.log_every=2106
# Epochs: what 17% more updates (best.yaml at 70 epochs) would buy.
run epochs14 --set schedule.steps=4914 --set train.log_every=4914
# Input noise: Gaussian noise (std 0.1 whitened units) on half of each batch's rows.
run noise01 --set augment.noise.fraction=0.5 --set augment.noise.std=0.1
# The round's winner (translate 2) against the baseline again, at a second seed.
run baseline-seed7 --seed 7
run translate2-seed7 --seed 7 --set augment.translate=2

#!/usr/bin/env bash
# examples/train_pong_dqn.py on a lent accelerator, as one command within one call's limit.
#
# The machine has torch but not gymnasium, the ALE or stable-baselines3: carry them as wheels
# for its Python 3.12 in .whl/ (ignored by git), fetched once here with
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux2014_x86_64 \
#     -d .whl gymnasium==1.4.0 farama-notifications==0.0.4 ale-py==0.12.1 stable-baselines3==2.9.2
# and run as the device's command (carry .whl):
#   bash tools/train_pong_on_device.sh 480
# It starts from examples/dqn_pong.pt (the shared reference, trained without sticky actions),
# explores little (it plays already), trains until the time limit in seconds (default 480),
# keeps time for the final evaluation, and writes dqn_pong.pt, dqn_pong.zip, meta.json and
# the log under $OUT/pong (the checkpoint, 27 MB, stays behind: a later call continues from
# the dqn_pong.pt that came back with --init).
set -euo pipefail
limit=${1:-480}
init=${2:-examples/dqn_pong.pt}
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
out=${OUT:-/tmp/out}/pong
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
python3 examples/train_pong_dqn.py --init "$init" --out "$out" --steps 5000000 --time-limit "$limit" \
  --envs 32 --learning-starts 20000 --eps-start 0.1 --eps-end 0.01 --eps-steps 250000 \
  --eval-every 250000 --eval-episodes 16 --final-episodes 30 2>&1 | tee "$out/log"

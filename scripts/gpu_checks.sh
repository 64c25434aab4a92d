#!/usr/bin/env bash
# Every GPU check in one go, on a machine with a CUDA GPU, the newest first (what a short lease
# must not miss):
#   1. tests marked gpu (CUDA-graph steps against eager steps, every shipped config captured, the
#      graph-captured DDP step against the eager one),
#   2. configs/trainer/ddp.yaml at world size 1 (graphed, and eager) against
#      configs/trainer/gpu_bf16.yaml, 10 epochs each (epoch times),
#   3. the one-class protocol (10 digits x 20 epochs): `aelight anomaly` (the digits one after
#      another) and configs/sweeps/one_class.yaml as a sweep with 1 and with 4 workers on the first
#      GPU (float32), and 4 workers with gpu_bf16.yaml: wall time and mean AUROC (needs optuna),
#   4. scripts/bench.py: the reference PyTorch loop against aelight in float32, bf16-mixed and
#      bf16-mixed + CUDA graph (with steps_per_batch 8 and 32),
#   5. the reference 50-epoch recipe with validation each epoch (scripts/time_fit.py): fit seconds
#      and test MSE in float32, bf16-mixed and bf16-mixed + CUDA graph (steps_per_batch 8 and 32).
# Each result goes to OUT_DIR as JSON or text, with a summary in OUT_DIR/summary.txt; a failing
# step does not stop the others. Needs the test extra (pytest). About 8 minutes on one H200.
#
#   scripts/gpu_checks.sh DATA_DIR OUT_DIR            # DATA_DIR holds MNIST/raw
#   ACCELERATOR=cpu EPOCHS=1 BENCH_EPOCHS=1 scripts/gpu_checks.sh data/ /tmp/out   # plumbing check on a CPU
#   STEP_TIMEOUT=150 scripts/gpu_checks.sh data/ /tmp/out   # each step stopped after 150 s
set -u
DATA=${1:?usage: gpu_checks.sh DATA_DIR OUT_DIR}
OUT=${2:?usage: gpu_checks.sh DATA_DIR OUT_DIR}
ACCELERATOR=${ACCELERATOR:-gpu}
EPOCHS=${EPOCHS:-50}
BENCH_EPOCHS=${BENCH_EPOCHS:-3}
STEP_TIMEOUT=${STEP_TIMEOUT:-240}
mkdir -p "$OUT"

step() {  # step NAME COMMAND...: runs COMMAND with a time limit, stdout to OUT/NAME, stderr to OUT/NAME.err
  local name=$1
  shift
  local start=$SECONDS
  timeout "$STEP_TIMEOUT" "$@" >"$OUT/$name" 2>"$OUT/$name.err"
  echo "$name: exit $?, $((SECONDS - start)) s" | tee -a "$OUT/summary.txt"
}

{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || echo "no nvidia-smi"; } >"$OUT/device.txt"
python3 -c "import torch, lightning; print(torch.__version__, lightning.__version__, torch.cuda.is_available())" >>"$OUT/device.txt"

if [ "$ACCELERATOR" = gpu ]; then
  step pytest_gpu.txt python3 -m pytest -q -m gpu -p no:cacheprovider tests/test_gpu.py

  # DDP at world size 1 against the single-GPU graphed path, 10 epochs each (epoch times in the JSON)
  ddp=(python3 scripts/time_fit.py -c configs/ae.yaml --data.data_dir "$DATA" --trainer.max_epochs 10
    --trainer.enable_progress_bar false --trainer.logger.init_args.save_dir "$OUT/logs")
  step fit_gpu_bf16_10.json "${ddp[@]}" -c configs/trainer/gpu_bf16.yaml --trainer.logger.init_args.name gpu_bf16_10
  step fit_ddp_ws1_10.json "${ddp[@]}" -c configs/trainer/ddp.yaml --trainer.devices 1 \
    --trainer.logger.init_args.name ddp_ws1_10
  step fit_ddp_ws1_eager_10.json "${ddp[@]}" -c configs/trainer/ddp.yaml --trainer.devices 1 --engine.cuda_graph false \
    --trainer.logger.init_args.name ddp_ws1_eager_10

  # The one-class protocol serially (aelight anomaly: the ten digits one after another in one
  # process; a sweep with 1 worker) and as a sweep with 4 workers sharing the GPU
  step anomaly_serial.txt python3 -m aelight anomaly --config configs/anomaly/ae.yaml --data.data_dir "$DATA" \
    --trainer.accelerator gpu --trainer.devices 1 --trainer.enable_progress_bar false \
    --trainer.logger.init_args.save_dir "$OUT/logs" --out "$OUT/anomaly_serial"
  for workers in 1 4; do
    step "sweep_one_class_w$workers.txt" python3 -m aelight sweep configs/sweeps/one_class.yaml --devices 0 \
      --workers_per_device "$workers" --out "$OUT/sweep_one_class_w$workers" --data.data_dir "$DATA"
  done
  step sweep_one_class_w4_gpu_bf16.txt python3 -m aelight sweep configs/sweeps/one_class.yaml --devices 0 \
    --workers_per_device 4 --out "$OUT/sweep_one_class_w4_gpu_bf16" --data.data_dir "$DATA" \
    --config configs/trainer/gpu_bf16.yaml
fi

# Speed of the single-GPU paths (README's figures)
bench=(python3 scripts/bench.py --data-dir "$DATA" --epochs "$BENCH_EPOCHS" --accelerator "$ACCELERATOR" --json)
step bench_fp32.json "${bench[@]}"
step bench_bf16.json "${bench[@]}" --precision bf16-mixed
step bench_bf16_graph.json "${bench[@]}" --precision bf16-mixed --cuda-graph
# Lightning's per-batch overhead against a graphed step: is a larger steps_per_batch the better GPU default?
step bench_bf16_graph_spb32.json "${bench[@]}" --precision bf16-mixed --cuda-graph --steps-per-batch 32

fit=(python3 scripts/time_fit.py -c configs/ae.yaml --data.data_dir "$DATA" --trainer.accelerator "$ACCELERATOR"
  --trainer.devices 1 --trainer.max_epochs "$EPOCHS" --trainer.enable_progress_bar false
  --trainer.logger.init_args.save_dir "$OUT/logs")
step fit_fp32.json "${fit[@]}" --trainer.logger.init_args.name fp32
step fit_bf16.json "${fit[@]}" --trainer.precision bf16-mixed --finite_loss.check_every_n_steps 128 \
  --trainer.logger.init_args.name bf16
step fit_bf16_graph.json "${fit[@]}" --trainer.precision bf16-mixed --finite_loss.check_every_n_steps 128 \
  --engine.cuda_graph true --trainer.logger.init_args.name bf16_graph
step fit_bf16_graph_spb32.json "${fit[@]}" --trainer.precision bf16-mixed --finite_loss.check_every_n_steps 128 \
  --engine.cuda_graph true --engine.steps_per_batch 32 --trainer.logger.init_args.name bf16_graph_spb32

#!/usr/bin/env bash
# Check the engine's CUDA-only paths on a GPU machine in one command (an estimated 5 minutes on
# an H100; not yet run on one): bf16 autocast, TF32, channels-last, fused AdamW, large evaluation
# batches, augmentation in chunks, torch.compile; then the throughput table without and with
# --compile.
#
#     bash benchmarks/gpu_check.sh            # from the repository root; MLflow is not needed
#
# Stage 1 trains each model for 2 epochs on the synthetic set through `engine.fit`, twice with
# the same seed (and the MLP once more compiled), and prints the environment, the curves and
# whether the two runs agree: on CUDA, cuDNN autotuning and atomics may make them differ in the
# last digits, which this check reports rather than fails on. Stages 2 and 3 print the
# throughput tables of benchmarks/throughput.py, without and with --compile. Output also goes to
# $OUT/gpu_check.log when OUT is set.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PYTHON=${PYTHON:-python3}
LOG=${OUT:-/tmp}/gpu_check.log

{
echo "== stage 0: device"
nvidia-smi -L
"$PYTHON" -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())"

echo "== stage 1: engine.fit on CUDA, twice per model with the same seed"
"$PYTHON" - <<'PY'
import tempfile
import time

import torch

from cifar_mlflow import data, engine, environment
from cifar_mlflow.config import TrainConfig


class Curves(engine.Callback):
    def __init__(self):
        self.losses = []

    def on_epoch_end(self, metrics):
        self.losses.append(metrics.train_loss)


with tempfile.TemporaryDirectory() as tmp:
    arrays = data.load_arrays(TrainConfig(dataset="synthetic", data_dir=tmp))
    runs = [(model, False) for model in ("mlp", "resnet18", "mlpmixer")] + [("mlp", True)]
    for model, compile in runs:
        config = TrainConfig(model=model, dataset="synthetic", epochs=2, device="cuda")
        env = environment.environment_for(config, compile=compile)
        device_data = data.to_device(arrays, config, env.device, env.memory_format)
        results = []
        for _ in range(1 if compile else 2):
            curves = Curves()
            start = time.perf_counter()
            _, final = engine.fit(config, device_data, env, [curves])
            results.append((curves.losses, final, time.perf_counter() - start))
        losses, final, seconds = results[0]
        print(
            f"{model}{' compiled' if compile else ''}: amp {env.amp_dtype}, "
            f"channels_last {env.memory_format == torch.channels_last}, eval batch "
            f"{env.eval_batch_size}, augment batches {env.augment_batches}, TF32 "
            f"{torch.backends.cuda.matmul.allow_tf32}; {seconds:.1f} s; train_loss {losses}; "
            f"valid acc {final.best_valid_acc:.3f}, test acc {final.test_acc:.3f}; "
            f"{final.train_images_per_s:,.0f} train img/s, "
            f"{final.inference_images_per_s:,.0f} inference img/s"
        )
        if len(results) == 2:
            print(f"  same seed, same curves: {results[0][0] == results[1][0]}")
PY

# 100 training batches per pass rather than a whole epoch: the reference loop's PIL workers
# make a 45,000-image pass take many seconds, and the device time of a session is short.
SIZES="--train-images 12800 --infer-images 5000"

echo "== stage 2: throughput, project loop as fit runs it"
"$PYTHON" benchmarks/throughput.py $SIZES

echo "== stage 3: throughput, project loop compiled"
"$PYTHON" benchmarks/throughput.py $SIZES --compile
} 2>&1 | tee "$LOG"

"""Serving speed on the CPU: `mlflow models serve` latency and `predict` throughput.

For each model, an untrained network of the study's architecture (speed does not depend on the
weights) is logged as the project logs a trained one, in a temporary SQLite store. Then:

- latency: `mlflow models serve` of it, JSON requests of 1 and of 64 images sent one after
  another (after a warm-up), p50 and p95 of the round trip as the client sees it;
- throughput: `python -m cifar_mlflow predict` over a folder of 1,000 PNG files (32×32 test
  images of the synthetic set): wall and CPU time of the whole command, start-up and model
  load included, images per second of wall time; and the wall time of the same command on a
  folder of one image, which is start-up and model load alone.

    python benchmarks/serving.py                      # mlp, resnet18, mlpmixer
    python benchmarks/serving.py --models mlp --requests 20
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import click
import numpy as np
import requests
from mlflow import MlflowClient
from PIL import Image
from plain_server import model_server

from cifar_mlflow.config import TrainConfig
from cifar_mlflow.data import CIFAR_FOLDER, read_cifar_folder, write_synthetic_cifar
from cifar_mlflow.models import build_model
from cifar_mlflow.tracking.model_logging import log_model

BATCH_SIZES = (1, 64)
WARM_UP_REQUESTS = 3
PREDICT_IMAGES = 1_000
EXPERIMENT = "serving-benchmark"


def logged_classifier(model: str, images: np.ndarray, class_names: tuple[str, ...]) -> str:
    """The URI of an untrained `model` logged as training logs one (no active run: see
    `log_model`)."""
    client = MlflowClient()
    experiment_id = client.get_experiment_by_name(EXPERIMENT).experiment_id
    run = client.create_run(experiment_id, run_name=f"serving-{model}")
    network = build_model(TrainConfig(model=model))
    model_id = log_model(run, network, class_names, images[:2], {})
    client.set_terminated(run.info.run_id)
    return f"models:/{model_id}"


def latencies_ms(url: str, images: np.ndarray, count: int) -> np.ndarray:
    body = {"inputs": images.tolist()}
    timings = []
    for index in range(WARM_UP_REQUESTS + count):
        start = time.perf_counter()
        response = requests.post(f"{url}/invocations", json=body, timeout=120)
        elapsed = time.perf_counter() - start
        response.raise_for_status()
        if index >= WARM_UP_REQUESTS:
            timings.append(elapsed * 1000)
    return np.asarray(timings)


def predict_times(model_uri: str, folder: Path) -> tuple[float, float]:
    """Wall and CPU seconds of `predict` over `folder`."""
    command = [sys.executable, "-m", "cifar_mlflow", "predict", "--model", model_uri, str(folder)]
    cpu_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    cpu_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if result.returncode != 0:
        raise click.ClickException(f"predict failed: {result.stderr.strip()[-500:]}")
    if len(result.stdout.splitlines()) != len(list(folder.iterdir())):
        raise click.ClickException("predict did not print one line per image")
    cpu = (cpu_after.ru_utime - cpu_before.ru_utime) + (cpu_after.ru_stime - cpu_before.ru_stime)
    return wall, cpu


@click.command()
@click.option("--models", default="mlp,resnet18,mlpmixer", show_default=True)
@click.option("--requests", "count", default=50, show_default=True, help="Timed per size.")
def main(models: str, count: int) -> None:
    """Print p50/p95 latency of the served model and `predict` throughput, per model."""
    with tempfile.TemporaryDirectory(prefix="cifar-serving-") as tmp:
        folder = Path(tmp)
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{folder / 'mlflow.db'}"
        MlflowClient().create_experiment(EXPERIMENT)
        data = folder / "synthetic" / CIFAR_FOLDER
        write_synthetic_cifar(data, train_size=10, test_size=PREDICT_IMAGES)
        arrays = read_cifar_folder(data, "synthetic")
        pngs, one_png = folder / "pngs", folder / "one-png"
        pngs.mkdir()
        one_png.mkdir()
        for index, image in enumerate(arrays.test_images):
            Image.fromarray(image).save(pngs / f"{index:04d}.png")
        Image.fromarray(arrays.test_images[0]).save(one_png / "0000.png")

        print(f"CPU, {os.cpu_count()} cores; {count} requests per size after {WARM_UP_REQUESTS}")
        print(
            f"{'model':<10} {'1 image p50/p95 (ms)':>22} {'64 images p50/p95 (ms)':>24} "
            f"{'predict 1,000 PNGs wall/CPU (s)':>32} {'img/s':>6} {'1 PNG (s)':>10}"
        )
        for model in models.split(","):
            uri = logged_classifier(model, arrays.test_images, arrays.class_names)
            cells = []
            with model_server(uri, folder) as (url, _):
                for size in BATCH_SIZES:
                    timings = latencies_ms(url, arrays.test_images[:size], count)
                    p50, p95 = np.percentile(timings, [50, 95])
                    cells.append(f"{p50:.1f} / {p95:.1f}")
            wall, cpu = predict_times(uri, pngs)
            start_up, _ = predict_times(uri, one_png)
            print(
                f"{model:<10} {cells[0]:>22} {cells[1]:>24} {f'{wall:.1f} / {cpu:.1f}':>32} "
                f"{PREDICT_IMAGES / wall:>6.0f} {start_up:>10.1f}",
                flush=True,
            )


if __name__ == "__main__":
    main()

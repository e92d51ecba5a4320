"""Serving speed on the CPU: the model as logged now, side by side with the release before.

For each model, an untrained network of the study's architecture (speed does not depend on the
weights) is logged twice in a temporary SQLite store: as the project logs a trained one now
(`pytorch` + `python_function` flavors, encoded image files in), and as the release before
did (`python_function` only, uint8 arrays of shape (N, 32, 32, 3) in: `ArraysClassifier`, the
same network and normalisation behind that release's signature). Then, in one run:

- latency: `mlflow models serve` of each, requests of 1 and of 64 images sent one after
  another (after a warm-up), p50 and p95 of the round trip as the client sees it: PNG files
  base64-encoded in JSON (`dataframe_split`, what docs/serving.md's curl sends) to the new
  model, and JSON arrays of integers (`{"inputs": [...]}`) to the old one;
- start-up: wall time of `python -m cifar_mlflow predict` on one PNG of the registered
  version (`models:/…/1`), and, for the old model's registered version, of the release
  before's way, as a fresh process (`BASELINE_LOAD`: the MLmodel resolved and fetched by
  `get_model_info`, then the model resolved and downloaded again by `pyfunc.load_model`,
  with its dependency check);
- throughput: `predict` over a folder of 1,000 PNG files: wall and CPU time, images/s.

    python benchmarks/serving.py                      # mlp, resnet18, mlpmixer
    python benchmarks/serving.py --models mlp --requests 20
"""

from __future__ import annotations

import base64
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import click
import mlflow
import numpy as np
import requests
from mlflow import MlflowClient
from mlflow.models import ModelSignature
from mlflow.types import Schema, TensorSpec
from PIL import Image
from plain_server import model_server

import cifar_mlflow
from cifar_mlflow.classifier import ImageClassifier, model_metadata
from cifar_mlflow.config import TrainConfig
from cifar_mlflow.data import (
    CIFAR_FOLDER,
    CIFAR_MEAN,
    CIFAR_STD,
    read_cifar_folder,
    write_synthetic_cifar,
)
from cifar_mlflow.models import build_model
from cifar_mlflow.tracking.model_logging import classes_pickled_by_value, encoded_images, log_model

BATCH_SIZES = (1, 64)
WARM_UP_REQUESTS = 3
PREDICT_IMAGES = 1_000
EXPERIMENT = "serving-benchmark"
BASELINE_LOAD = """
import sys
from pathlib import Path
import mlflow
from cifar_mlflow import prediction
mlflow.models.get_model_info(sys.argv[1])
model = mlflow.pyfunc.load_model(sys.argv[1])
model.predict(prediction.read_image(Path(sys.argv[2]))[None])
"""


class ArraysClassifier(mlflow.pyfunc.PythonModel):
    """The release before's pyfunc: uint8 arrays (N, 32, 32, 3) in, the same answers out."""

    def __init__(self, classifier: ImageClassifier) -> None:
        self.classifier = classifier

    def predict(self, context, model_input: np.ndarray, params=None):
        return self.classifier.answer(model_input)


def logged_models(model: str, images: np.ndarray, class_names: tuple[str, ...]) -> tuple[str, str]:
    """URIs of an untrained `model` logged as now and as the release before logged it."""
    client = MlflowClient()
    experiment_id = client.get_experiment_by_name(EXPERIMENT).experiment_id
    run = client.create_run(experiment_id, run_name=f"serving-{model}")
    network = build_model(TrainConfig(model=model)).eval()
    new_id = log_model(run, network, class_names, images[:2], {})
    old = ArraysClassifier(ImageClassifier(network, class_names, CIFAR_MEAN, CIFAR_STD))
    signature = ModelSignature(Schema([TensorSpec(np.dtype(np.uint8), (-1, 32, 32, 3))]))
    with classes_pickled_by_value(cifar_mlflow), mlflow.start_run(run_id=run.info.run_id):
        old_info = mlflow.pyfunc.log_model(
            name="arrays-model",
            python_model=old,
            signature=signature,
            input_example=images[:2],
            metadata=model_metadata(class_names),
            pip_requirements=["torch", "cloudpickle"],
        )
    new = mlflow.register_model(f"models:/{new_id}", f"serving-{model}")
    old = mlflow.register_model(old_info.model_uri, f"serving-{model}-arrays")
    return f"models:/{new.name}/{new.version}", f"models:/{old.name}/{old.version}"


def latencies_ms(url: str, body: dict, count: int) -> np.ndarray:
    timings = []
    for index in range(WARM_UP_REQUESTS + count):
        start = time.perf_counter()
        response = requests.post(f"{url}/invocations", json=body, timeout=120)
        elapsed = time.perf_counter() - start
        response.raise_for_status()
        if index >= WARM_UP_REQUESTS:
            timings.append(elapsed * 1000)
    return np.asarray(timings)


def png_body(images: np.ndarray) -> dict:
    files = encoded_images(images)["image"]
    data = [[base64.b64encode(file).decode()] for file in files]
    return {"dataframe_split": {"columns": ["image"], "data": data}}


def served_cells(uri: str, folder: Path, bodies: list[dict], count: int) -> list[str]:
    cells = []
    with model_server(uri, folder) as (url, _):
        for body in bodies:
            p50, p95 = np.percentile(latencies_ms(url, body, count), [50, 95])
            cells.append(f"{p50:.1f} / {p95:.1f}")
    return cells


def timed(command: list[str], lines: int | None = None) -> tuple[float, float]:
    """Wall and CPU seconds of `command`, which must print `lines` lines if given."""
    cpu_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    cpu_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if result.returncode != 0:
        raise click.ClickException(f"{command[2]} failed: {result.stderr.strip()[-500:]}")
    if lines is not None and len(result.stdout.splitlines()) != lines:
        raise click.ClickException("predict did not print one line per image")
    cpu = (cpu_after.ru_utime - cpu_before.ru_utime) + (cpu_after.ru_stime - cpu_before.ru_stime)
    return wall, cpu


def predict_command(model_uri: str, folder: Path) -> list[str]:
    return [sys.executable, "-m", "cifar_mlflow", "predict", "--model", model_uri, str(folder)]


@click.command()
@click.option("--models", default="mlp,resnet18,mlpmixer", show_default=True)
@click.option("--requests", "count", default=50, show_default=True, help="Timed per size.")
def main(models: str, count: int) -> None:
    """Latency of the served model and `predict`'s start-up and throughput, now and before."""
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
        batches = [arrays.test_images[:size] for size in BATCH_SIZES]

        print(
            f"CPU, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}; "
            f"{count} requests per size after {WARM_UP_REQUESTS}"
        )
        print(
            f"{'model':<10} {'served as':<22} {'1 image p50/p95 (ms)':>21} "
            f"{'64 images p50/p95 (ms)':>23} {'start-up (s)':>13} "
            f"{'predict 1,000 PNGs wall/CPU (s)':>32} {'img/s':>6}"
        )
        for model in models.split(","):
            new_uri, old_uri = logged_models(model, arrays.test_images, arrays.class_names)
            old = served_cells(
                old_uri, folder, [{"inputs": batch.tolist()} for batch in batches], count
            )
            new = served_cells(new_uri, folder, [png_body(batch) for batch in batches], count)
            one = str(one_png / "0000.png")
            baseline_start, _ = timed([sys.executable, "-c", BASELINE_LOAD, old_uri, one])
            start_up, _ = timed(predict_command(new_uri, one_png), lines=1)
            wall, cpu = timed(predict_command(new_uri, pngs), lines=PREDICT_IMAGES)
            print(
                f"{model:<10} {'before: JSON arrays':<22} {old[0]:>21} {old[1]:>23} "
                f"{baseline_start:>13.1f}\n"
                f"{'':<10} {'now: PNG files':<22} {new[0]:>21} {new[1]:>23} {start_up:>13.1f} "
                f"{f'{wall:.1f} / {cpu:.1f}':>32} {PREDICT_IMAGES / wall:>6.0f}",
                flush=True,
            )


if __name__ == "__main__":
    main()

"""Serving speed on the CPU: the model as logged now, side by side with the release before.

For each model, an untrained network of the study's architecture (speed does not depend on the
weights) is logged twice in a temporary SQLite store: as the project logs a trained one now
(`pytorch` + `python_function` flavors, encoded image files in), and as the release before
did (`python_function` only, uint8 arrays of shape (N, 32, 32, 3) in: `ArraysClassifier`, the
same network and normalisation behind that release's signature). Then, in one run:

- latency: `mlflow models serve` of both at once, requests of 1 and of 64 images sent one
  after another, alternating between the two (after a warm-up), p50 and p95 of the round trip
  as the client sees it: PNG files base64-encoded in JSON (`dataframe_split`, what
  docs/serving.md's curl sends) to the new model, JSON arrays of integers (`{"inputs": ...}`)
  to the old one;
- start-up: wall and CPU time, medians of 3 fresh processes alternating with the baseline's,
  of `python -m cifar_mlflow predict` on one PNG of the new model's registered version
  (`models:/…/1`); the baseline is the release before's way with the old model's version
  (`BASELINE_LOAD`: the MLmodel resolved and fetched by `get_model_info`, then the model
  resolved and downloaded again by `pyfunc.load_model`, with its requirements check);
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
from cifar_mlflow.cifar_pickle import CIFAR_FOLDER
from cifar_mlflow.classifier import ImageClassifier, model_metadata
from cifar_mlflow.config import TrainConfig
from cifar_mlflow.data import CIFAR_MEAN, CIFAR_STD, read_cifar_folder
from cifar_mlflow.models import build_model
from cifar_mlflow.synthetic import write_synthetic_cifar
from cifar_mlflow.tracking.model_logging import classes_pickled_by_value, encoded_images, log_model

BATCH_SIZES = (1, 64)
WARM_UP_REQUESTS = 3
PREDICT_IMAGES = 1_000
START_UP_REPEATS = 3
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


def latencies_ms(urls: list[str], bodies: list[dict], count: int) -> list[np.ndarray]:
    """Round trips of `bodies[i]` to `urls[i]`, alternating, so that load hits each alike."""
    timings: list[list[float]] = [[] for _ in urls]
    for index in range(WARM_UP_REQUESTS + count):
        for url, body, measured in zip(urls, bodies, timings, strict=True):
            start = time.perf_counter()
            response = requests.post(f"{url}/invocations", json=body, timeout=120)
            elapsed = time.perf_counter() - start
            response.raise_for_status()
            if index >= WARM_UP_REQUESTS:
                measured.append(elapsed * 1000)
    return [np.asarray(measured) for measured in timings]


def png_body(images: np.ndarray) -> dict:
    files = encoded_images(images)["image"]
    data = [[base64.b64encode(file).decode()] for file in files]
    return {"dataframe_split": {"columns": ["image"], "data": data}}


def served_cells(
    old_uri: str, new_uri: str, folder: Path, images: np.ndarray, count: int
) -> list[list[str]]:
    """p50 / p95 cells of the old and the new model, served side by side, per batch size."""
    cells: list[list[str]] = [[], []]
    old_folder, new_folder = folder / "old-server", folder / "new-server"
    old_folder.mkdir(exist_ok=True)
    new_folder.mkdir(exist_ok=True)
    with (
        model_server(old_uri, old_folder) as (old, _),
        model_server(new_uri, new_folder) as (new, _),
    ):
        for size in BATCH_SIZES:
            bodies = [{"inputs": images[:size].tolist()}, png_body(images[:size])]
            for column, timings in zip(cells, latencies_ms([old, new], bodies, count), strict=True):
                p50, p95 = np.percentile(timings, [50, 95])
                column.append(f"{p50:.1f} / {p95:.1f}")
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


def start_ups(baseline: list[str], command: list[str]) -> tuple[str, str]:
    """Median wall / CPU seconds of each command over `START_UP_REPEATS`, alternating."""
    times: list[list[tuple[float, float]]] = [[], []]
    for _ in range(START_UP_REPEATS):
        times[0].append(timed(baseline))
        times[1].append(timed(command, lines=1))
    return tuple(  # type: ignore[return-value]
        "{:.1f} / {:.1f}".format(*np.median(np.asarray(pairs), axis=0)) for pairs in times
    )


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
        # Its artifacts in the temporary folder too, not in `./mlruns` of the working folder.
        MlflowClient().create_experiment(EXPERIMENT, (folder / "artifacts").as_uri())
        data = folder / "synthetic" / CIFAR_FOLDER
        write_synthetic_cifar(data, train_size=10, test_size=PREDICT_IMAGES)
        arrays = read_cifar_folder(data, "synthetic")
        pngs, one_png = folder / "pngs", folder / "one-png"
        pngs.mkdir()
        one_png.mkdir()
        for index, image in enumerate(arrays.test_images):
            Image.fromarray(image).save(pngs / f"{index:04d}.png")
        Image.fromarray(arrays.test_images[0]).save(one_png / "0000.png")

        print(
            f"CPU, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}; "
            f"{count} requests per size after {WARM_UP_REQUESTS}"
        )
        print(
            f"{'model':<10} {'served as':<22} {'1 image p50/p95 (ms)':>21} "
            f"{'64 images p50/p95 (ms)':>23} {'start-up wall/CPU':>17} "
            f"{'predict 1,000 PNGs wall/CPU (s)':>32} {'img/s':>6}"
        )
        for model in models.split(","):
            new_uri, old_uri = logged_models(model, arrays.test_images, arrays.class_names)
            old, new = served_cells(old_uri, new_uri, folder, arrays.test_images, count)
            one = str(one_png / "0000.png")
            baseline_start, start_up = start_ups(
                [sys.executable, "-c", BASELINE_LOAD, old_uri, one],
                predict_command(new_uri, one_png),
            )
            wall, cpu = timed(predict_command(new_uri, pngs), lines=PREDICT_IMAGES)
            print(
                f"{model:<10} {'before: JSON arrays':<22} {old[0]:>21} {old[1]:>23} "
                f"{baseline_start:>17}\n"
                f"{'':<10} {'now: PNG files':<22} {new[0]:>21} {new[1]:>23} {start_up:>17} "
                f"{f'{wall:.1f} / {cpu:.1f}':>32} {PREDICT_IMAGES / wall:>6.0f}",
                flush=True,
            )


if __name__ == "__main__":
    main()

"""Training and inference images/s of the project's loop against the source study's loop.

For each model (MLP, ResNet18, MLP-Mixer with patch 4), in one process, on the same images
(the synthetic set at CIFAR size), with the same architecture and initialisation, batch 128 and
AdamW:

- project:   `engine.train_one_epoch` and `engine.evaluate` as `fit` runs them: the data set
             normalised on the device, batched augmentation there, the environment that
             `environment.environment_for` picks (channels-last convolutions, fused optimiser, bf16
             autocast where the device has native bf16 (`precision=auto`), TF32 on CUDA), no
             host synchronisation inside a pass;
- reference: the source assignment's loop: a torchvision `CIFAR10`-style Dataset over uint8
             arrays, PIL transforms (RandomHorizontalFlip, RandomResizedCrop(32, scale
             (0.8, 1), ratio (0.9, 1.1)), ToTensor, Normalize) through a `DataLoader` with one
             worker per core, `.item()` on every step, fp32 with PyTorch's default backend flags
             (no TF32 matmuls), contiguous memory format, the default (foreach) AdamW.

Every pass is timed with device synchronisation; each loop is warmed up first (the project's
with a two-batch pass, which also compiles under --compile: that time is the `warm-up s`
column; the reference's DataLoader workers are persistent and started by an untimed pass over
its data, so its numbers leave out worker start-up, a choice in its favour). Repeats
interleave the loops, so load from other processes hits both alike; the table shows medians.
FLOPs per image are counted with `torch.utils.flop_counter.FlopCounterMode` (matmuls and
convolutions; forward + backward for training); on CUDA, `peak %` is the share of the device's
dense bf16 peak; on a CPU, of the FLOP/s of the model's dominant GEMM shape (`gemm_peak.py`) in
the project's precision, timed in the same repeats, interleaved with the loops. `data %` is the
share of the project's training pass spent shuffling and augmenting.

    .venv/bin/python benchmarks/throughput.py [--quick] [--models mlp,resnet18,mlpmixer]
        [--train-images N] [--infer-images N] [--repeats 3] [--device auto] [--compile]
        [--precision auto|fp32|bf16]

Measured 2026-11-27 on the development machine (2-core AMD EPYC Zen 4 with AVX512-BF16, KVM,
torch 2.14.1, 2 torch threads; the machine is shared, so the load average is printed — under
heavy load the ratios swing by 2x either way). `--quick` (precision auto = bf16 here), load
2.3, 1 min 23 s:

    model     phase  images  project img/s  reference img/s  ratio  project GFLOP/s
    mlp       train    2560         9207.1           2254.1   4.08            146.9
    mlp       infer    5000        50015.9           5859.8   8.54            370.9
    resnet18  train     256          109.9             44.6   2.46            365.8
    resnet18  infer     256          396.4            178.0   2.23            440.3
    mlpmixer  train     256          246.6            133.7   1.84            224.2
    mlpmixer  infer     512          869.7            425.8   2.04            264.0

`--quick --precision fp32`, load below 2, as a CPU without native bf16 runs:

    model     phase  images  project img/s  reference img/s  ratio  project GFLOP/s
    mlp       train    2560         7197.8           2376.0   3.03            114.8
    mlp       infer    5000        26305.4           6263.0   4.20            195.1
    resnet18  train     256           60.4             50.0   1.21            201.2
    resnet18  infer     256          205.0            196.3   1.04            227.7
    mlpmixer  train     256          148.7            151.5   0.98            135.2
    mlpmixer  infer     512          488.9            455.4   1.07            148.4

The CPU's fp32 peak is about 240 GFLOP/s (2 cores × 32 FLOP/cycle × ~3.7 GHz): in fp32,
ResNet18 runs at ~85 % of it in both loops, which leaves the project's loop only
channels-last (1.2x); the Mixer is bound by its own matmuls and LayerNorm/GELU traffic in
both (torch.compile: 1.05x). The MLP gains from the data staying on the device, the fused
AdamW and no workers competing for the two cores. bf16 doubles the CPU's peak.
The augmentation (`data %`) is 6-7 % of the MLP's training pass and under 1.5 % of the others'.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import click
import numpy as np
import torch
import torch.nn.functional as F
from gemm_peak import dominant_gemm, gemm_pass
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torch.utils.flop_counter import FlopCounterMode
from torchvision import transforms

from cifar_mlflow import data, engine, environment, synthetic
from cifar_mlflow.augmentation import CROP_RATIO, CROP_SCALE
from cifar_mlflow.config import PRECISIONS, TrainConfig
from cifar_mlflow.models import build_model

MODELS = ("mlp", "resnet18", "mlpmixer")
BATCH_SIZE = 128
WARM_UP_BATCHES = 2
# Images per timed pass (train, inference), sized so a pass takes a few seconds on a 2-core CPU
# (ResNet18 trains at about 50 images/s there). Multiples of the batch sizes, so no pass meets a
# batch shape its warm-up did not (which would recompile under --compile).
QUICK_IMAGES = {"mlp": (2_560, 5_000), "resnet18": (256, 256), "mlpmixer": (256, 512)}
CPU_IMAGES = {"mlp": (12_800, 10_000), "resnet18": (640, 1_280), "mlpmixer": (1_280, 2_560)}
# On a GPU: an epoch of the 45,000-image train split (351 full batches) and the valid split.
GPU_IMAGES = {model: (44_928, 5_000) for model in MODELS}
# Dense bf16 tensor-core peaks (TFLOP/s) from the data sheets; the first name fragment found in
# the device's name wins ("NVIDIA H100 80GB HBM3" is the SXM part).
BF16_PEAK_TFLOPS = {
    "H200": 989.0,
    "H100 PCIe": 756.0,
    "H100 NVL": 835.0,
    "H100": 989.0,
    "A100": 312.0,
    "L40S": 362.0,
    "L4": 121.0,
    "A10G": 70.0,
    "A10": 125.0,
}
PHASES = ("train", "infer")


@dataclass(frozen=True)
class Loop:
    """A way to train and to evaluate: a timed pass of each phase and its untimed warm-up."""

    passes: dict[str, Callable[[], None]]  # phase -> one pass over that phase's images
    warm_ups: dict[str, Callable[[], None]]  # phase -> a short pass on the same shapes


@dataclass(frozen=True)
class Row:
    model: str
    phase: str  # train | infer
    images: int
    project: float  # images/s, median over repeats
    reference: float
    project_warm_up_s: float
    reference_warm_up_s: float
    flops_per_image: float
    data_share: float | None  # share of the project's training pass spent on its data
    peak_flops: float | None  # the 100 % of `peak %`: data sheet (CUDA) or measured GEMM (CPU)


class ReferenceCIFAR10(Dataset):
    """torchvision's `CIFAR10.__getitem__`: a uint8 HWC array → PIL image → transform."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform: Callable) -> None:
        self.images = images
        self.labels = labels
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.transform(Image.fromarray(self.images[index])), int(self.labels[index])


def reference_loader(
    images: np.ndarray, labels: np.ndarray, train: bool, persistent: bool = True
) -> DataLoader:
    normalise = [transforms.ToTensor(), transforms.Normalize(data.CIFAR_MEAN, data.CIFAR_STD)]
    augmentation = [
        transforms.RandomHorizontalFlip(),
        transforms.RandomResizedCrop(32, scale=CROP_SCALE, ratio=CROP_RATIO),
    ]
    transform = transforms.Compose([*augmentation, *normalise] if train else normalise)
    return DataLoader(
        ReferenceCIFAR10(images, labels, transform),
        batch_size=BATCH_SIZE,
        shuffle=train,
        num_workers=len(os.sched_getaffinity(0)),
        persistent_workers=persistent,
    )


def reference_train(
    model: nn.Module, optimizer: torch.optim.Optimizer, loader: DataLoader, device: torch.device
) -> None:
    model.train()
    running_loss, correct = 0.0, 0
    for images, labels in loader:
        images, labels = images.to(device), labels.to(device)
        optimizer.zero_grad()
        outputs = model(images)
        loss = F.cross_entropy(outputs, labels)
        loss.backward()
        optimizer.step()
        running_loss += loss.item()
        correct += outputs.argmax(dim=1).eq(labels).sum().item()


def reference_infer(model: nn.Module, loader: DataLoader, device: torch.device) -> None:
    model.eval()
    total_loss, correct = 0.0, 0
    with torch.no_grad():
        for images, labels in loader:
            images, labels = images.to(device), labels.to(device)
            outputs = model(images)
            total_loss += F.cross_entropy(outputs, labels).item()
            correct += outputs.argmax(dim=1).eq(labels).sum().item()


@contextlib.contextmanager
def pytorch_default_flags() -> Iterator[None]:
    """PyTorch's default backend flags, as the source ran; `environment_for` changes them."""
    saved = (
        torch.backends.cuda.matmul.allow_tf32,
        torch.backends.cudnn.allow_tf32,
        torch.backends.cudnn.benchmark,
    )
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = True
    torch.backends.cudnn.benchmark = False
    try:
        yield
    finally:
        (
            torch.backends.cuda.matmul.allow_tf32,
            torch.backends.cudnn.allow_tf32,
            torch.backends.cudnn.benchmark,
        ) = saved


def project_loop(
    config: TrainConfig, env: environment.Environment, splits: data.DeviceData
) -> tuple[Loop, Callable[[], None]]:
    """The engine's passes as `fit` runs them, and a pass over its training data alone."""
    torch.manual_seed(config.seed)
    model = build_model(config).to(env.device, memory_format=env.memory_format)
    optimizer = engine.build_optimizer(config, model, env.device)
    forward = env.compiled(model)
    generator = torch.Generator(env.device).manual_seed(config.seed)

    def train(split: data.Split) -> None:
        engine.train_one_epoch(forward, optimizer, split, config, env, generator, ())

    def infer(split: data.Split) -> None:
        engine.evaluate(forward, split, env)

    def data_only() -> None:
        for _ in engine.training_batches(splits.train, config.batch_size, generator, env):
            pass

    # Warm-up on the timed passes' shapes: two training batches, one evaluation batch.
    warm_up_train = head(splits.train, WARM_UP_BATCHES * config.batch_size)
    warm_up_infer = head(splits.test, env.eval_batch_size)
    loop = Loop(
        passes={"train": lambda: train(splits.train), "infer": lambda: infer(splits.test)},
        warm_ups={"train": lambda: train(warm_up_train), "infer": lambda: infer(warm_up_infer)},
    )
    return loop, data_only


def reference_loop(
    config: TrainConfig, device: torch.device, arrays: data.CifarArrays, train_idx: np.ndarray
) -> Loop:
    """The source's loop on the same images, initial weights and hyperparameters."""
    torch.manual_seed(config.seed)
    model = build_model(config).to(device)
    optimizer = torch.optim.AdamW(
        model.parameters(),
        lr=config.lr,
        betas=(config.momentum, 0.999),
        weight_decay=config.weight_decay,
    )
    train_images, train_labels = arrays.train_images[train_idx], arrays.train_labels[train_idx]
    train_loader = reference_loader(train_images, train_labels, train=True)
    infer_loader = reference_loader(arrays.test_images, arrays.test_labels, train=False)
    # Start the persistent workers now, so that no timed pass pays for it.
    for loader in (train_loader, infer_loader):
        for _ in loader:
            pass
    warm_up = WARM_UP_BATCHES * config.batch_size
    warm_up_train = reference_loader(train_images[:warm_up], train_labels[:warm_up], True, False)
    warm_up_infer = reference_loader(
        arrays.test_images[:BATCH_SIZE], arrays.test_labels[:BATCH_SIZE], False, False
    )

    def train(loader: DataLoader) -> None:
        with pytorch_default_flags():
            reference_train(model, optimizer, loader, device)

    def infer(loader: DataLoader) -> None:
        with pytorch_default_flags():
            reference_infer(model, loader, device)

    return Loop(
        passes={"train": lambda: train(train_loader), "infer": lambda: infer(infer_loader)},
        warm_ups={"train": lambda: train(warm_up_train), "infer": lambda: infer(warm_up_infer)},
    )


def head(split: data.Split, count: int) -> data.Split:
    return data.Split(split.images[:count], split.labels[:count])


def flops_per_image(config: TrainConfig, device: torch.device, train: bool) -> float:
    """Matmul and convolution FLOPs per image of one batch (forward + backward when training)."""
    model = build_model(config).to(device).train(train)
    images = torch.randn(BATCH_SIZE, 3, 32, 32, device=device)
    labels = torch.zeros(BATCH_SIZE, dtype=torch.long, device=device)
    with FlopCounterMode(display=False) as counter:
        if train:
            F.cross_entropy(model(images), labels).backward()
        else:
            with torch.no_grad():
                model(images)
    return counter.get_total_flops() / BATCH_SIZE


def synthetic_arrays(folder: Path, train_images: int, infer_images: int) -> data.CifarArrays:
    # The valid split takes 10 % of the train images: write enough for `train_images` to remain.
    train_size = -(-train_images * 10 // 9) + 10
    synthetic.write_synthetic_cifar(folder, train_size=train_size, test_size=infer_images)
    return data.read_cifar_folder(folder, name="synthetic")


def bench_model(
    name: str,
    arrays: data.CifarArrays,
    train_images: int,
    device: str,
    repeats: int,
    compile: bool,
    precision: str,
) -> list[Row]:
    """Both loops on `arrays`: warm-ups, then `repeats` interleaved timed passes of each."""
    config = TrainConfig.from_overrides(
        {
            "model": name,
            "dataset": "synthetic",
            "train_size": train_images,
            "patch_size": 4,
            "batch_size": BATCH_SIZE,
            "device": device,
            "precision": precision,
            "compile": compile,
        }
    )
    env = environment.environment_for(config)
    splits = data.to_device(arrays, config, env.device, env.memory_format)
    project, data_only = project_loop(config, env, splits)
    # The same train images as the project's split: the seeded split, then the first N.
    train_idx = data.split_indices(len(arrays.train_labels), config.seed)[0][:train_images]
    loops = {
        "project": project,
        "reference": reference_loop(config, env.device, arrays, train_idx.numpy()),
    }

    warm_up = {
        (phase, who): engine.timed(env, loop.warm_ups[phase])
        for phase in PHASES
        for who, loop in loops.items()
    }
    seconds: dict[tuple[str, str], list[float]] = {key: [] for key in warm_up}
    data_seconds, gemm_seconds = [], []
    gemm, gemm_flops = model_gemm(config, env)
    # Interleaved, so that load from other processes slows both loops alike.
    for _ in range(repeats):
        for phase in PHASES:
            for who, loop in loops.items():
                seconds[phase, who].append(engine.timed(env, loop.passes[phase]))
        data_seconds.append(engine.timed(env, data_only))
        if gemm is not None:
            gemm_seconds.append(engine.timed(env, gemm))
    peak_flops = (
        gemm_flops / statistics.median(gemm_seconds) if gemm else bf16_peak_flops(env.device)
    )

    rows = []
    for phase, count in (("train", len(splits.train)), ("infer", len(splits.test))):
        project_s = statistics.median(seconds[phase, "project"])
        reference_s = statistics.median(seconds[phase, "reference"])
        train = phase == "train"
        rows.append(
            Row(
                model=name,
                phase=phase,
                images=count,
                project=count / project_s,
                reference=count / reference_s,
                project_warm_up_s=warm_up[phase, "project"],
                reference_warm_up_s=warm_up[phase, "reference"],
                flops_per_image=flops_per_image(config, env.device, train),
                data_share=statistics.median(data_seconds) / project_s if train else None,
                peak_flops=peak_flops,
            )
        )
    return rows


def model_gemm(config: TrainConfig, env: environment.Environment) -> tuple[Callable | None, float]:
    """On a CPU, a pass of the model's dominant GEMM in the project's precision, and its FLOPs."""
    if env.device.type != "cpu":
        return None, 0.0
    model = build_model(config).eval()
    shape = dominant_gemm(model, torch.randn(BATCH_SIZE, 3, 32, 32))
    dtype = torch.bfloat16 if env.precision == "bf16" else torch.float32
    run, flops = gemm_pass(shape, env.device, dtype)
    click.echo(f"{config.model}: peak % against a {'x'.join(map(str, shape))} {dtype} GEMM")
    return run, flops


def bf16_peak_flops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for fragment, tflops in BF16_PEAK_TFLOPS.items():
        if fragment in name:
            return tflops * 1e12
    return None


def format_table(rows: list[Row]) -> str:
    header = (
        f"{'model':<9} {'phase':<5} {'images':>7} {'project img/s':>14} "
        f"{'reference img/s':>16} {'ratio':>6} {'project GFLOP/s':>16} {'peak %':>7} "
        f"{'data %':>7} {'warm-up s':>14}"
    )
    lines = [header, "-" * len(header)]
    for row in rows:
        achieved = row.project * row.flops_per_image
        peak = f"{100 * achieved / row.peak_flops:.1f}" if row.peak_flops else "-"
        data_share = f"{100 * row.data_share:.1f}" if row.data_share is not None else "-"
        warm_up = f"{row.project_warm_up_s:.1f}/{row.reference_warm_up_s:.1f}"
        lines.append(
            f"{row.model:<9} {row.phase:<5} {row.images:>7} {row.project:>14.1f} "
            f"{row.reference:>16.1f} {row.project / row.reference:>6.2f} "
            f"{achieved / 1e9:>16.1f} {peak:>7} {data_share:>7} {warm_up:>14}"
        )
    return "\n".join(lines)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--quick", is_flag=True, help="Few images per pass: minutes on a 2-core CPU.")
@click.option(
    "--models",
    default=",".join(MODELS),
    show_default=True,
    help="Comma-separated subset of the models.",
)
@click.option("--train-images", type=int, help="Images per training pass, for every model.")
@click.option("--infer-images", type=int, help="Images per inference pass, for every model.")
@click.option("--repeats", default=3, show_default=True, help="Timed passes per loop.")
@click.option("--device", default="auto", show_default=True, help="auto | cpu | cuda | mps.")
@click.option("--compile", is_flag=True, help="torch.compile the project's model.")
@click.option(
    "--precision",
    type=click.Choice(PRECISIONS),
    default="auto",
    show_default=True,
    help="The project loop's precision; auto = bf16 where native, as `fit` runs.",
)
def main(
    quick: bool,
    models: str,
    train_images: int | None,
    infer_images: int | None,
    repeats: int,
    device: str,
    compile: bool,
    precision: str,
) -> None:
    """Time the project's training and inference loops against the source study's loop."""
    names = [name.strip() for name in models.split(",") if name.strip()]
    unknown = sorted(set(names) - set(MODELS))
    if unknown:
        raise click.BadParameter(f"unknown model {unknown[0]!r}", param_hint="--models")
    torch_device = environment.resolve_device(device)
    sizes = QUICK_IMAGES if quick else CPU_IMAGES if torch_device.type == "cpu" else GPU_IMAGES
    peak_flops = bf16_peak_flops(torch_device)
    setting = [
        f"device {torch_device} ({describe(torch_device)})",
        f"torch {torch.__version__}",
        f"batch {BATCH_SIZE}, adamw",
        f"project {'bf16' if environment.uses_bf16(precision, torch_device) else 'fp32'}"
        f"{', compiled' if compile else ''}",
        f"{len(os.sched_getaffinity(0))} reference workers",
        f"median of {repeats} repeats",
        f"load average {os.getloadavg()[0]:.1f}",
    ]
    if peak_flops:
        setting.append(f"bf16 peak {peak_flops / 1e12:.0f} TFLOP/s")
    click.echo(", ".join(setting))
    rows: list[Row] = []
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="throughput-") as tmp:
        for name in names:
            train_count = train_images or sizes[name][0]
            infer_count = infer_images or sizes[name][1]
            arrays = synthetic_arrays(Path(tmp) / name, train_count, infer_count)
            rows += bench_model(name, arrays, train_count, device, repeats, compile, precision)
            click.echo(f"{name}: done after {time.perf_counter() - started:.0f} s")
    click.echo(format_table(rows))
    click.echo(
        "ratio = project / reference images/s; warm-up s = project/reference untimed first "
        "pass (compile included); data % = shuffle + augmentation share of the project's pass; "
        f"load average at the end {os.getloadavg()[0]:.1f}"
    )


def describe(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{torch.get_num_threads()} torch threads"


if __name__ == "__main__":
    main()

"""Images/s of the project's loop eager and compiled (`--compile`), side by side in one process.

For each model, two copies of the loop `benchmarks/throughput.py` times — the same data,
initialisation and environment, one with `TrainConfig.compile` — are warmed up (the compiled
one compiles then: its `compile s` column) and timed in interleaved repeats, so load from other
processes hits both alike; the table shows medians. On CUDA the compiled loop replays CUDA
graphs (mode reduce-overhead), on a CPU it runs Inductor's C++ kernels (needs a C compiler).

    .venv/bin/python benchmarks/compile_speedup.py [--models mlp] [--device auto]
        [--train-images N] [--infer-images N] [--repeats 5]

Measured figures are in docs/gpus.md.
"""

from __future__ import annotations

import dataclasses
import os
import statistics
import tempfile
from pathlib import Path

import click
import torch
from throughput import BATCH_SIZE, CPU_IMAGES, GPU_IMAGES, MODELS, PHASES, project_loop
from throughput import synthetic_arrays as throughput_arrays

from cifar_mlflow import data, engine, environment
from cifar_mlflow.config import TrainConfig


def compare(
    name: str, train_images: int, infer_images: int, device: str, repeats: int, tmp: Path
) -> list[str]:
    """Table lines for `name`: per phase, eager and compiled images/s and the speed-up."""
    arrays = throughput_arrays(tmp / name, train_images, infer_images)
    eager = TrainConfig(
        model=name,
        dataset="synthetic",
        train_size=train_images,
        batch_size=BATCH_SIZE,
        device=device,
    )
    loops, envs, compile_s = {}, {}, {}
    for compiled in (False, True):
        config = dataclasses.replace(eager, compile=compiled)
        env = environment.environment_for(config)
        splits = data.to_device(arrays, config, env.device, env.memory_format)
        loops[compiled], _ = project_loop(config, env, splits)
        envs[compiled] = env
        compile_s[compiled] = sum(
            engine.timed(env, loops[compiled].warm_ups[phase]) for phase in PHASES
        )
    seconds: dict[tuple[str, bool], list[float]] = {
        (phase, compiled): [] for phase in PHASES for compiled in loops
    }
    for _ in range(repeats):
        for phase in PHASES:
            for compiled, loop in loops.items():
                seconds[phase, compiled].append(engine.timed(envs[compiled], loop.passes[phase]))
    lines = []
    for phase, count in (("train", train_images), ("infer", infer_images)):
        eager_rate = count / statistics.median(seconds[phase, False])
        compiled_rate = count / statistics.median(seconds[phase, True])
        lines.append(
            f"{name:<9} {phase:<6} {count:>6} {eager_rate:>12.1f} {compiled_rate:>14.1f} "
            f"{compiled_rate / eager_rate:>8.2f} {compile_s[True]:>10.1f}"
        )
    return lines


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--models", default="mlp", show_default=True, help="Comma-separated models.")
@click.option("--device", default="auto", show_default=True, help="auto | cpu | cuda | mps.")
@click.option("--train-images", type=int, help="Images per training pass, for every model.")
@click.option("--infer-images", type=int, help="Images per inference pass, for every model.")
@click.option("--repeats", default=5, show_default=True, help="Timed passes per loop.")
def main(
    models: str,
    device: str,
    train_images: int | None,
    infer_images: int | None,
    repeats: int,
) -> None:
    """Time the project's loop eager and compiled, side by side."""
    names = [name.strip() for name in models.split(",") if name.strip()]
    unknown = sorted(set(names) - set(MODELS))
    if unknown:
        raise click.BadParameter(f"unknown model {unknown[0]!r}", param_hint="--models")
    torch_device = environment.resolve_device(device)
    sizes = CPU_IMAGES if torch_device.type == "cpu" else GPU_IMAGES
    described = (
        torch.cuda.get_device_name(torch_device)
        if torch_device.type == "cuda"
        else f"{torch.get_num_threads()} torch threads"
    )
    click.echo(
        f"device {torch_device} ({described}), torch {torch.__version__}, batch {BATCH_SIZE}, "
        f"median of {repeats} repeats, load average {os.getloadavg()[0]:.1f}"
    )
    click.echo("model     phase  images  eager img/s  compiled img/s  speed-up  compile s")
    with tempfile.TemporaryDirectory(prefix="compile-speedup-") as tmp:
        for name in names:
            train_count = train_images or sizes[name][0]
            infer_count = infer_images or sizes[name][1]
            for line in compare(name, train_count, infer_count, device, repeats, Path(tmp)):
                click.echo(line)
    click.echo(f"load average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()

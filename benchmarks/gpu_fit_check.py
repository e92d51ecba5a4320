"""`engine.fit` on a device, checked for what docs/gpus.md claims is exact.

Per model, on the synthetic set: a run, the same run again (same seed: same curves?), and the
run interrupted after its first epoch and resumed from the checkpoint (the same final weights
as the uninterrupted run?). Prints the environment `environment_for` chose, the time, the
curves and both answers; a mismatch is reported, not raised. On CUDA the answers are expected
to be yes only with `--deterministic`; on a CPU, always.

    python benchmarks/gpu_fit_check.py [--device cuda] [--models mlp,resnet18,mlpmixer]
        [--epochs 2] [--train-size 0] [--deterministic] [--compile]
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
from pathlib import Path

import click
import torch

from cifar_mlflow import data, engine, environment
from cifar_mlflow.checkpoint import load_checkpoint
from cifar_mlflow.config import TrainConfig, model_names


class Curves(engine.Callback):
    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_epoch_end(self, metrics) -> None:
        self.losses.append(metrics.train_loss)


def same_weights(first: torch.nn.Module, second: torch.nn.Module) -> bool:
    pairs = zip(first.state_dict().values(), second.state_dict().values(), strict=True)
    return all(torch.equal(a, b) for a, b in pairs)


def check(config: TrainConfig, arrays: data.CifarArrays, tmp: Path) -> None:
    env = environment.environment_for(config)
    device_data = data.to_device(arrays, config, env.device, env.memory_format)
    runs = []
    for _ in range(2):
        curves = Curves()
        start = time.perf_counter()
        model, final = engine.fit(config, device_data, env, [curves])
        runs.append((model, curves.losses, final, time.perf_counter() - start))
    model, losses, final, seconds = runs[0]
    click.echo(
        f"{config.model}: {env.precision}, channels_last "
        f"{env.memory_format == torch.channels_last}, eval batch {env.eval_batch_size}, "
        f"augment batches {env.augment_batches}, compiled {env.compile}, deterministic "
        f"{config.deterministic}; {seconds:.1f} s; training losses {losses}; valid acc "
        f"{final.best_valid_acc:.3f}, test acc {final.test_acc:.3f}; "
        f"{final.train_images_per_s:,.0f} train img/s, "
        f"{final.inference_images_per_s:,.0f} inference img/s"
    )
    click.echo(f"  same seed, same curves: {losses == runs[1][1]}")
    path = tmp / config.model / "last.pt"
    first_epoch = dataclasses.replace(config, epochs=1)
    engine.fit(first_epoch, device_data, env, checkpoint=path)
    resumed, _ = engine.fit(config, device_data, env, resume=load_checkpoint(path))
    click.echo(f"  resumed after epoch 1, same final weights: {same_weights(model, resumed)}")


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--device", default="cuda", show_default=True, help="auto | cpu | cuda | mps.")
@click.option("--models", default=",".join(model_names()), show_default=True)
@click.option("--epochs", default=2, show_default=True)
@click.option("--train-size", default=0, show_default=True, help="0 = the synthetic set's.")
@click.option("--deterministic", is_flag=True, help="Deterministic kernels (`--deterministic`).")
@click.option("--compile", is_flag=True, help="torch.compile (`--compile`).")
def main(
    device: str, models: str, epochs: int, train_size: int, deterministic: bool, compile: bool
) -> None:
    """Train each model twice and once resumed; say whether the three agree."""
    with tempfile.TemporaryDirectory(prefix="gpu-fit-check-") as tmp:
        base = TrainConfig(dataset="synthetic", data_dir=tmp, train_size=train_size)
        arrays = data.load_arrays(base)
        for name in models.split(","):
            config = dataclasses.replace(
                base,
                model=name.strip(),
                epochs=epochs,
                device=device,
                deterministic=deterministic,
                compile=compile,
            )
            check(config, arrays, Path(tmp))


if __name__ == "__main__":
    main()

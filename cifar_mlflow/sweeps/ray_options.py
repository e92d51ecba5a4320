"""What `executor=ray` is told on the command line; kept apart so that no Ray is imported."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from cifar_mlflow.config import TrainConfig
from cifar_mlflow.errors import ExecutorError


@dataclass(frozen=True)
class RayOptions:
    """Where `executor=ray` runs the trials, and what each trial reserves there."""

    address: str = ""  # "" or "local": a Ray instance on this machine, started if none runs
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0  # fractions let small models share a GPU

    def params(self) -> dict[str, str]:
        return {
            "ray_address": self.address,
            "cpus_per_trial": f"{self.cpus_per_trial:g}",
            "gpus_per_trial": f"{self.gpus_per_trial:g}",
        }

    def check_devices(self, configs: Sequence[TrainConfig]) -> None:
        """Refuse trials that ask for a GPU Ray would hide from them (it hides every GPU from a
        task that reserves none), before any run exists."""
        if self.gpus_per_trial == 0 and any(config.device == "cuda" for config in configs):
            raise ExecutorError(
                "device=cuda needs gpus_per_trial > 0 with executor=ray: Ray hides the GPUs "
                "from a trial that reserves none"
            )

"""What `executor=ray` is told on the command line; kept apart so that no Ray is imported."""

from __future__ import annotations

from dataclasses import dataclass


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

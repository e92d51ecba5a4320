"""An evaluation batch that fits in the GPU's memory (issue 17).

On a GPU the whole valid split goes through the model at once (`GPU_EVAL_BATCH_SIZE`), which
the default models take in a few hundred MB, but a Mixer with patch 1-2 and width 512 would
need 16-60 GB. The batch is capped by an estimate of the activation memory per image against
the memory the device has left once training holds its gradients and optimiser state.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from cifar_mlflow.environment import Environment

# Share of the memory left for activations that one evaluation batch may take: room for the
# caching allocator's fragmentation, cuDNN workspaces and the estimate's own error.
MEMORY_SHARE = 0.5
# Gradients (one copy of the parameters) and Adam's two moments: allocated once training runs,
# so not yet counted when the batch is chosen.
TRAINING_COPIES_OF_PARAMETERS = 3
# A `forward`'s own variables hold tensors that no module call has as input (ResNet18's block
# keeps its first conv's output while the second runs): +25 % covers the three models.
LOCALS_MARGIN = 1.25


def tensors_in(value: object) -> list[torch.Tensor]:
    """The tensors of a module's inputs or output (a tensor, or a tuple or list of them)."""
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, tuple | list):
        return [tensor for item in value for tensor in tensors_in(item)]
    return []


def storage_bytes(tensors: list[torch.Tensor]) -> int:
    """Bytes of the distinct storages behind `tensors` (a view costs nothing more)."""
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}
    return sum(storages.values())


def activation_bytes_per_image(model: nn.Module, image: torch.Tensor, env: Environment) -> int:
    """Estimated peak activation bytes per image of `model`'s inference forward pass.

    One forward pass of `image` (a batch of one, in the environment's precision) follows the
    module calls: while a leaf module runs, its output, its input and the input of every module
    that encloses it are alive (Python holds a call's arguments until it returns; a residual
    block keeps its input for the shortcut). The largest such sum is scaled by `LOCALS_MARGIN`
    for what a `forward` keeps in its own variables, unseen by hooks (measured against the live
    tensor bytes of each model in tests/test_eval_memory.py). Activations grow linearly with
    the batch, so this is per image.
    """
    running: list[list[torch.Tensor]] = []  # inputs of the modules now executing
    peak = 0

    def enter(_module: nn.Module, inputs: tuple) -> None:
        running.append(tensors_in(inputs))

    def leave(module: nn.Module, _inputs: tuple, output: object) -> None:
        nonlocal peak
        if not any(module.children()):
            alive = [t for inputs in running for t in inputs] + tensors_in(output)
            peak = max(peak, storage_bytes(alive))
        running.pop()

    hooks = [
        hook
        for m in model.modules()
        for hook in (m.register_forward_pre_hook(enter), m.register_forward_hook(leave))
    ]
    try:
        model.eval()
        with torch.inference_mode(), env.autocast():
            model(image)
    finally:
        for hook in hooks:
            hook.remove()
    return int(peak * LOCALS_MARGIN)


def batch_that_fits(per_image: int, available: int, limit: int) -> int:
    """The largest evaluation batch up to `limit` whose activations take `MEMORY_SHARE` of
    `available` bytes; at least one image."""
    return max(1, min(limit, int(available * MEMORY_SHARE) // max(per_image, 1)))


def with_eval_batch_for_memory(
    env: Environment, model: nn.Module, image: torch.Tensor
) -> Environment:
    """`env` with its evaluation batch capped by the CUDA device's memory; elsewhere `env`.

    Called once the model is on the device and before training: what training will allocate
    (gradients, optimiser state) is subtracted from what is free now, and memory PyTorch has
    cached but not allocated counts as free.
    """
    if env.device.type != "cuda":
        return env
    free, _ = torch.cuda.mem_get_info(env.device)
    cached = torch.cuda.memory_reserved(env.device) - torch.cuda.memory_allocated(env.device)
    parameters = storage_bytes(list(model.parameters()))
    available = free + cached - TRAINING_COPIES_OF_PARAMETERS * parameters
    per_image = activation_bytes_per_image(model, image, env)
    batch = batch_that_fits(per_image, available, env.eval_batch_size)
    return dataclasses.replace(env, eval_batch_size=batch)

"""The training engine: optimisers, the epoch loop, the test split, determinism, learning."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from cifar_mlflow import checkpoint, data, engine, environment, schema
from cifar_mlflow.checkpoint import TrainingState, load_checkpoint
from cifar_mlflow.config import OPTIMIZERS, TrainConfig
from cifar_mlflow.data import CifarArrays, DeviceData, Split
from cifar_mlflow.engine import Callback
from cifar_mlflow.schema import EpochMetrics, FinalMetrics

CPU = torch.device("cpu")


@pytest.fixture(scope="session")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> CifarArrays:
    """The synthetic set, generated once per session under a temporary folder."""
    config = TrainConfig(dataset="synthetic", data_dir=str(tmp_path_factory.mktemp("data")))
    return data.load_arrays(config)


def small_config(**changes) -> TrainConfig:
    fields = {
        "model": "mlp",
        "dataset": "synthetic",
        "hidden_sizes": (64,),
        "epochs": 2,
        "batch_size": 64,
        "device": "cpu",
        **changes,
    }
    return TrainConfig.from_overrides(fields)


def tiny_data(train: int = 96, valid: int = 32, test: int = 40, seed: int = 0) -> DeviceData:
    generator = torch.Generator().manual_seed(seed)

    def split(count: int) -> Split:
        return Split(
            torch.randn(count, 3, 32, 32, generator=generator),
            torch.randint(0, 10, (count,), generator=generator),
        )

    return DeviceData(train=split(train), valid=split(valid), test=split(test), num_classes=10)


class Recorder(Callback):
    def __init__(self, events: list | None = None) -> None:
        self.events = [] if events is None else events
        self.epochs: list[EpochMetrics] = []
        self.final: FinalMetrics | None = None
        self.batches = 0

    def on_train_start(
        self, model: nn.Module, num_epochs: int, batches_per_epoch: int, completed: list
    ) -> None:
        self.events.append(("start", num_epochs, batches_per_epoch))

    def on_batch_end(self) -> None:
        self.batches += 1

    def on_epoch_end(self, metrics: EpochMetrics) -> None:
        self.epochs.append(metrics)
        self.events.append(("epoch_end", metrics.epoch))

    def on_test_start(self, model: nn.Module) -> None:
        self.events.append(("test_start",))

    def on_train_end(self, model: nn.Module, metrics: FinalMetrics) -> None:
        self.final = metrics
        self.events.append(("train_end",))


# --- optimisers --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", OPTIMIZERS)
@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_every_optimizer_honours_weight_decay(name: str, weight_decay: float) -> None:
    model = nn.Linear(4, 3)
    nn.init.constant_(model.weight, 1.0)
    nn.init.constant_(model.bias, -1.0)
    config = TrainConfig(optimizer=name, lr=0.01, weight_decay=weight_decay)
    optimizer = engine.build_optimizer(config, model, CPU)
    for param in model.parameters():
        param.grad = torch.zeros_like(param)  # a zero gradient: only decay can move weights
    optimizer.step()
    if weight_decay:
        assert (model.weight < 1.0).all() and (model.weight > 0.9).all()
        assert (model.bias > -1.0).all()
    else:
        assert torch.equal(model.weight, torch.ones_like(model.weight))


def test_optimizer_options_are_passed_through() -> None:
    model = nn.Linear(2, 2)

    def build(**changes) -> torch.optim.Optimizer:
        return engine.build_optimizer(TrainConfig(lr=0.02, momentum=0.8, **changes), model, CPU)

    sgd = build(optimizer="sgd")
    assert type(sgd) is torch.optim.SGD and sgd.param_groups[0]["momentum"] == 0
    momentum = build(optimizer="momentum")
    assert type(momentum) is torch.optim.SGD and momentum.param_groups[0]["momentum"] == 0.8
    adam = build(optimizer="adam")
    assert type(adam) is torch.optim.Adam and adam.param_groups[0]["betas"][0] == 0.8
    adamw = build(optimizer="adamw", weight_decay=0.05)
    assert type(adamw) is torch.optim.AdamW
    assert adamw.param_groups[0]["weight_decay"] == 0.05
    assert all(opt.param_groups[0]["lr"] == 0.02 for opt in (sgd, momentum, adam, adamw))


# --- the epoch loop ----------------------------------------------------------------------------


def test_fit_reports_every_epoch_then_final_metrics() -> None:
    config = small_config(epochs=3, batch_size=40)
    recorder = Recorder()
    model, final = engine.fit(config, tiny_data(), environment.environment_for(config), [recorder])
    assert recorder.events == [
        ("start", 3, 3),  # ceil(96 / 40) batches
        ("epoch_end", 1),
        ("epoch_end", 2),
        ("epoch_end", 3),
        ("test_start",),
        ("train_end",),
    ]
    assert recorder.batches == 9
    assert [m.epoch for m in recorder.epochs] == [1, 2, 3]
    for metrics in recorder.epochs:
        assert 0.0 <= metrics.train_acc <= 1.0 and 0.0 <= metrics.valid_acc <= 1.0
        assert metrics.train_loss > 0 and metrics.valid_loss > 0
        assert metrics.epoch_time_s > 0 and metrics.lr == config.lr
        assert set(metrics.metrics()) == {
            schema.METRIC_TRAIN_LOSS,
            schema.METRIC_TRAIN_ACC,
            schema.METRIC_VALID_LOSS,
            schema.METRIC_VALID_ACC,
            schema.METRIC_EPOCH_TIME_S,
            "lr",
        }
    assert recorder.final == final
    assert final.best_valid_acc == max(m.valid_acc for m in recorder.epochs)
    assert final.num_params == sum(p.numel() for p in model.parameters())
    assert 0.0 <= final.test_acc <= 1.0 and final.test_loss > 0
    assert final.train_epoch_time_s > 0 and final.inference_time_s > 0
    assert final.train_images_per_s == pytest.approx(96 / final.train_epoch_time_s)
    assert final.inference_images_per_s == pytest.approx(32 / final.inference_time_s)


def test_train_epoch_time_is_the_median_after_the_first_epoch(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Epoch durations 100, 3, 5, 4 s: the warm-up epoch is left out, the median is 4 s.
    durations = iter([100.0, 3.0, 5.0, 4.0])
    clock = {"now": 0.0}

    def fake_train_one_epoch(*args, **kwargs):
        clock["now"] += next(durations)
        return 1.0, 0.5

    monkeypatch.setattr(engine, "train_one_epoch", fake_train_one_epoch)
    monkeypatch.setattr(engine.time, "perf_counter", lambda: clock["now"])
    monkeypatch.setattr(engine, "inference_time", lambda *args: 2.0)
    config = small_config(epochs=4)
    recorder = Recorder()
    _, final = engine.fit(config, tiny_data(), environment.environment_for(config), [recorder])
    assert [m.epoch_time_s for m in recorder.epochs] == [100.0, 3.0, 5.0, 4.0]
    assert final.train_epoch_time_s == 4.0
    assert final.train_time_s == 112.0  # the compute spent counts every epoch, warm-up too
    assert final.train_images_per_s == pytest.approx(96 / 4.0)
    assert final.inference_time_s == 2.0


# --- the test split is evaluated once, at the end ----------------------------------------------

# Constant images no train image gets near, so every forward pass says which split it saw.
VALID_MARK = 500.0
TEST_MARK = 1_000.0


def split_of(images: torch.Tensor) -> str:
    top = images.abs().max().item()
    return "test" if top >= 0.9 * TEST_MARK else "valid" if top >= 0.9 * VALID_MARK else "train"


def test_test_split_is_evaluated_once_after_the_last_epoch(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    tiny = tiny_data()
    valid = Split(torch.full_like(tiny.valid.images, VALID_MARK), tiny.valid.labels)
    test = Split(torch.full_like(tiny.test.images, TEST_MARK), tiny.test.labels)
    device_data = dataclasses.replace(tiny, valid=valid, test=test)
    events: list = []

    class WatchInputs(Recorder):
        def on_train_start(self, model, num_epochs, batches_per_epoch, completed) -> None:
            super().on_train_start(model, num_epochs, batches_per_epoch, completed)

            def see(_module, inputs) -> None:
                events.append(("forward", split_of(inputs[0]), model.training))

            model.register_forward_pre_hook(see)

    real_evaluate, real_augment = engine.evaluate, engine.augment

    def spy_evaluate(model, split, env, *args, **kwargs):
        events.append(("evaluate", "test" if split is test else "valid" if split is valid else "?"))
        return real_evaluate(model, split, env, *args, **kwargs)

    def spy_augment(images, generator):
        events.append(("augment", split_of(images)))
        return real_augment(images, generator)

    monkeypatch.setattr(engine, "evaluate", spy_evaluate)
    monkeypatch.setattr(engine, "augment", spy_augment)
    config = small_config(epochs=3, batch_size=32)
    engine.fit(config, device_data, environment.environment_for(config), [WatchInputs(events)])

    last_epoch = max(i for i, event in enumerate(events) if event[0] == "epoch_end")
    test_seen = [i for i, e in enumerate(events) if e[0] == "forward" and e[1] == "test"]
    assert test_seen, "the test split was never evaluated"
    assert min(test_seen) > last_epoch
    # Callbacks get the final model after the inference timing, before the test split.
    test_start = events.index(("test_start",))
    timing_seen = [i for i, e in enumerate(events) if e[:2] == ("forward", "valid")]
    assert max(timing_seen) < test_start < min(test_seen)
    evaluated = [e[1] for e in events if e[0] == "evaluate"]
    assert evaluated == ["valid", "valid", "valid", "test"]
    # Valid and test are seen in eval mode, train batches in training mode.
    for _, split, training in (e for e in events if e[0] == "forward"):
        assert training == (split == "train"), (split, training)
    # Augmentation: every training batch (3 per epoch), never a valid or test image.
    assert [e[1] for e in events if e[0] == "augment"] == ["train"] * 9
    # One valid evaluation before each epoch's report.
    epoch_ends = [i for i, e in enumerate(events) if e[0] == "epoch_end"]
    valid_evals = [i for i, e in enumerate(events) if e == ("evaluate", "valid")]
    assert all(
        start < v < end
        for v, start, end in zip(valid_evals, [0, *epoch_ends[:-1]], epoch_ends, strict=True)
    )


# --- learning ----------------------------------------------------------------------------------


class StopWhenLearned(Recorder):
    """Stops training once valid accuracy passes the bar (saves the remaining epochs)."""

    class Learned(Exception):
        pass

    def on_epoch_end(self, metrics: EpochMetrics) -> None:
        super().on_epoch_end(metrics)
        if metrics.valid_acc > 0.5:
            raise self.Learned


def test_mlp_learns_the_synthetic_set_within_three_epochs(synthetic: CifarArrays) -> None:
    config = TrainConfig(model="mlp", dataset="synthetic", epochs=3, device="cpu")
    env = environment.environment_for(config)
    device_data = data.to_device(synthetic, config, env.device)
    assert len(device_data.train) == 4_500 and len(device_data.valid) == 500
    recorder = StopWhenLearned()
    with pytest.raises(StopWhenLearned.Learned):
        engine.fit(config, device_data, env, [recorder])
    assert len(recorder.epochs) <= 3
    assert recorder.epochs[-1].valid_acc > 0.5
    assert recorder.epochs[0].train_loss < np.log(10) * 1.2  # no divergence at the start


def test_the_device_auto_resolves_to_an_available_device() -> None:
    device = environment.resolve_device("auto")
    if not torch.cuda.is_available() and not torch.backends.mps.is_available():
        assert device == CPU
    assert environment.resolve_device("cpu") == CPU


@pytest.mark.parametrize("native", [True, False])
def test_precision_auto_is_bf16_only_where_the_cpu_has_it_natively(
    monkeypatch: pytest.MonkeyPatch, native: bool
) -> None:
    monkeypatch.setattr(environment, "cpu_has_native_bf16", lambda: native)
    auto = environment.environment_for(TrainConfig(device="cpu"))
    assert auto.amp_dtype == (torch.bfloat16 if native else None)
    assert auto.precision == ("bf16" if native else "fp32")
    for precision, dtype in (("fp32", None), ("bf16", torch.bfloat16)):
        env = environment.environment_for(TrainConfig(device="cpu", precision=precision))
        assert env.amp_dtype == dtype
    assert not environment.uses_bf16("auto", torch.device("mps"))


def curves(precision: str, seed: int, synthetic: CifarArrays) -> list[tuple[float, ...]]:
    """Loss and accuracy per epoch (the times vary from run to run)."""
    config = small_config(
        hidden_sizes=(256, 64), train_size=2_000, batch_size=128, seed=seed, precision=precision
    )
    env = environment.environment_for(config)
    recorder = Recorder()
    engine.fit(config, data.to_device(synthetic, config, env.device), env, [recorder])
    return [(e.train_loss, e.train_acc, e.valid_loss, e.valid_acc) for e in recorder.epochs]


BF16_SEEDS = (1, 2, 3, 4)


def test_bf16_reaches_fp32_accuracy_and_repeats_its_curves(synthetic: CifarArrays) -> None:
    fp32 = {seed: curves("fp32", seed, synthetic) for seed in BF16_SEEDS}
    bf16 = {seed: curves("bf16", seed, synthetic) for seed in BF16_SEEDS}
    first = BF16_SEEDS[0]
    assert bf16[first] == curves("bf16", first, synthetic)  # same seed: same curves
    assert all(bf16[seed] != fp32[seed] for seed in BF16_SEEDS)  # autocast really ran in bf16
    # How far bf16 lands from fp32 depends on the CPU: where bf16 is emulated (AVX2 only) it is
    # rounded differently from AVX512-BF16 or AMX, and a fixed tolerance tuned on one of them
    # fails on the other. Rounding every matmul changes the trajectory as much as another seed
    # does, so the yardstick is fp32's own spread over these seeds, measured here on this CPU:
    # the mean final accuracies may differ by at most the range of fp32's (for four normal
    # draws the expected range is 2.06 sigma, about 2.9 standard errors of the difference of
    # two 4-seed means). Losses are not compared: a 0.1 gap there is within the seed spread.
    fp32_accs = [curve[-1][3] for curve in fp32.values()]
    bf16_accs = [curve[-1][3] for curve in bf16.values()]
    seed_spread = max(fp32_accs) - min(fp32_accs)
    assert abs(np.mean(bf16_accs) - np.mean(fp32_accs)) <= seed_spread, (fp32_accs, bf16_accs)


# --- checkpoints -------------------------------------------------------------------------------


def slow_save(monkeypatch: pytest.MonkeyPatch) -> None:
    """Writes that land well after the loop has moved on."""
    save = checkpoint.save_checkpoint

    def save_later(path: Path, state: TrainingState) -> None:
        time.sleep(0.3)
        save(path, state)

    monkeypatch.setattr(checkpoint, "save_checkpoint", save_later)


def test_a_checkpoint_holds_its_epoch_although_training_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    slow_save(monkeypatch)
    model = nn.Linear(4, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.ones(1, 4)).sum().backward()
    optimizer.step()
    weights = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    moment = optimizer.state_dict()["state"][0]["exp_avg"].clone()
    history = [{"epoch": 1}]
    path = tmp_path / "run" / "last.pt"
    with checkpoint.CheckpointWriter(path) as writer:
        writer.hold(
            TrainingState(
                1,
                model.state_dict(),
                optimizer.state_dict(),
                torch.zeros(1),
                torch.zeros(1),
                history,
                [1.0],
            )
        )
        writer.start_write()
        assert not path.exists()  # written in the background
        optimizer.step()  # the next epoch changes weights and moments in place
        history.append({"epoch": 2})
    saved = load_checkpoint(path)
    assert saved.epoch == 1 and saved.history == [{"epoch": 1}]
    for name, tensor in weights.items():
        assert torch.equal(saved.model[name], tensor), name
    assert torch.equal(saved.optimizer["state"][0]["exp_avg"], moment)


def test_leaving_on_an_error_still_writes_the_last_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    slow_save(monkeypatch)
    path = tmp_path / "run" / "last.pt"
    state = TrainingState(3, {"w": torch.ones(2)}, {}, torch.zeros(1), torch.zeros(1))
    with pytest.raises(KeyboardInterrupt), checkpoint.CheckpointWriter(path) as writer:
        writer.hold(state)
        raise KeyboardInterrupt
    assert load_checkpoint(path).epoch == 3

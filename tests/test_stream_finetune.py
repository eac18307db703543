"""The one finetuning loop over a streamed split: deterministic, K models as one by one, and a run
interrupted mid-epoch resumes from its checkpoint (with the input's iterator state) exactly."""

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from sbjax import checkpoints, strategies
from sbjax.data import cache, make_transform, open_split
from sbjax.finetune import MaskUpdates, finetune, finetune_many
from sbjax.optim import FinetuneConfig, OptimizerConfig
from train_fixtures import TinyNet

SETTINGS = FinetuneConfig(8, 2, OptimizerConfig("sgd", lr=0.05, momentum=0.9, nesterov=True))
TRAIN = make_transform("cifar", (0.5,) * 3, (0.25,) * 3, train=True)
EVAL = make_transform("cifar", (0.5,) * 3, (0.25,) * 3, train=False)


@pytest.fixture(autouse=True)
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv(cache.CACHE_ENV, str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def splits(tmp_path_factory):
    """48 PNGs of 8 x 8 whose first channel carries the label; 12 held out for validation."""
    root = tmp_path_factory.mktemp("folder")
    rng = np.random.default_rng(0)
    for i in range(48):
        label = i % 4
        pixels = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
        pixels[..., 0] = pixels[..., 0] // 2 + 40 * label
        (root / "train" / "abcd"[label]).mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(root / "train" / "abcd"[label] / f"{i:02d}.png")
    return open_split("x", "train", data_dir=root, val_size=12), open_split("x", "validation", data_dir=root, val_size=12)


def start():
    model = TinyNet(num_classes=4)
    variables = model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 3)))
    return model, variables, strategies.random(variables["params"], None, 0.5, key=jax.random.key(1))


def run(splits, key=7, **kwargs):
    model, variables, mask = start()
    return finetune(model, variables, mask, *splits, SETTINGS, jax.random.key(key), transform_train=TRAIN,
                    transform_eval=EVAL, log=lambda line: None, **kwargs)  # fmt: skip


def test_a_streamed_finetuning_is_deterministic_and_learns(splits):
    first, again, other = run(splits), run(splits), run(splits, key=8)
    assert first.epochs == 2 and len(first.history) == 2
    assert checkpoints.digest(first.variables) == checkpoints.digest(again.variables)
    assert first.history == [dict(r, seconds=a["seconds"]) for r, a in zip(again.history, first.history)]
    assert checkpoints.digest(first.variables) != checkpoints.digest(other.variables)
    assert first.history[-1]["train_loss"] < first.history[0]["train_loss"]


def test_k_streamed_models_give_each_the_result_it_gets_alone(splits):
    model, variables, mask = start()
    keys = jax.random.split(jax.random.key(3), 2)
    many = finetune_many(model, [variables] * 2, [mask] * 2, *splits, SETTINGS, keys, transform_train=TRAIN,
                         transform_eval=EVAL, execution="sequential", log=lambda line: None)  # fmt: skip
    for k in range(2):
        alone = finetune(model, variables, mask, *splits, SETTINGS, keys[k], transform_train=TRAIN,
                         transform_eval=EVAL, log=lambda line: None)  # fmt: skip
        assert checkpoints.digest(many[k].variables) == checkpoints.digest(alone.variables)


class Interrupt(Exception):
    pass


def interrupt_at(step: int, armed: list[bool]) -> MaskUpdates:
    """Mask 'updates' that change nothing but raise, once, before ``step`` (mid-epoch 2 here)."""

    def update(i, state):
        if armed and armed.pop():
            raise Interrupt(i)
        return state

    return MaskUpdates(frozenset({step}), update, name="interrupt")


@pytest.mark.parametrize("streamed", [True, False])
def test_a_run_interrupted_mid_epoch_resumes_at_its_step_exactly(splits, tmp_path, streamed):
    data = splits if streamed else tuple(s.load() for s in splits)
    reference = run(data, updates=interrupt_at(6, []))  # 36 examples: 4 steps an epoch; step 6 is epoch 2's third
    with pytest.raises(Interrupt):
        run(data, updates=interrupt_at(6, [True]), checkpoint_dir=tmp_path, checkpoint_every=1)
    within = Path(tmp_path) / "within-epoch"
    assert sorted(int(p.name) for p in within.iterdir() if p.name.isdigit()) == [10**9 + 1, 10**9 + 2]
    resumed = run(data, updates=interrupt_at(6, []), checkpoint_dir=tmp_path, checkpoint_every=1)
    assert checkpoints.digest(resumed.variables) == checkpoints.digest(reference.variables)
    strip = lambda h: [{k: v for k, v in r.items() if k != "seconds"} for r in h]  # noqa: E731
    assert strip(resumed.history) == strip(reference.history)

"""The keys of an experiment's seed: one derivation for the sweep, the CLI and pretraining.

Every source of randomness of an experiment comes from its seed through :func:`experiment_keys`,
so ``sbjax prune --seed 0`` and a sweep's seed 0 give the same mask, scoring batch and model
initialization, and ``sbjax train --seed 0`` the same finetuning order as a sweep's seed 0.
"""

from __future__ import annotations

import jax

__all__ = ["KEY_NAMES", "experiment_keys"]

KEY_NAMES = ("mask", "score", "finetune", "schedule", "reinit")  # folded into the seed's key in this order
"""The named keys derived by ``fold_in``; ``"init"`` is the seed's own key."""


def experiment_keys(seed: int) -> dict[str, jax.Array]:
    """The named keys of ``seed``.

    Returns:
        ``init`` (the model's initialization when there is no checkpoint: ``jax.random.key(seed)``),
        ``mask`` (random masks), ``score`` (the scoring batch), ``finetune`` (batch order and
        augmentation), ``schedule`` (a schedule's own randomness, such as SET's regrowth) and
        ``reinit`` (the fresh initialization of a reinitialization control), folded from
        ``init`` in :data:`KEY_NAMES` order.

    >>> keys = experiment_keys(0)
    >>> sorted(keys)
    ['finetune', 'init', 'mask', 'reinit', 'schedule', 'score']
    >>> bool((jax.random.key_data(keys["mask"]) == jax.random.key_data(experiment_keys(0)["mask"])).all())
    True
    """
    root = jax.random.key(seed)
    return {"init": root, **{name: jax.random.fold_in(root, i) for i, name in enumerate(KEY_NAMES)}}

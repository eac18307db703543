"""A sweep compiles per setup and per strategy, not per experiment: more compressions compile nothing more."""

import jax

from sbjax import config as config_lib
from sbjax import experiment

BACKEND_COMPILE = "/jax/core/compile/backend_compile_duration"


def compiles_after_each_experiment(tmp_path, compressions):
    names, counts = [], []

    def listen(event, duration, **kwargs):
        if event == BACKEND_COMPILE:
            names.append(kwargs.get("fun_name"))

    sets = ["seeds=[0]", 'strategies=["global_magnitude","global_gradient"]', f"compressions={compressions}",
            'finetune={"epochs":1,"steps_per_epoch":2}']  # fmt: skip
    jax.monitoring.register_event_duration_secs_listener(listen)
    try:
        experiment.run_sweep(config_lib.load_sweep(None, sets), tmp_path, log=lambda _: counts.append(len(names)))
    finally:
        jax.monitoring.unregister_event_duration_listener(listen)
    return counts, names


def test_the_default_sweeps_compiles_do_not_grow_with_its_experiments(tmp_path):
    counts, names = compiles_after_each_experiment(tmp_path, [1, 2, 4, 8])
    # the reference, then global_magnitude x2, x4, x8, then global_gradient x2, x4, x8
    assert len(counts) == 7
    assert counts[2] == counts[3] == counts[1], ("global_magnitude", counts, names)
    assert counts[5] == counts[6] == counts[4], ("global_gradient", counts, names)

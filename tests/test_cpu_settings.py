"""The `sbjax` command applies BENCHMARKS.md's CPU settings: only on CPU, never over the user's, once."""

import json
import os
import subprocess
import sys

import pytest

from sbjax.cpu_settings import MARKER, TUNED_MALLOC, TUNED_XLA_FLAG, changes, on_cpu

CPU = {"JAX_PLATFORMS": "cpu"}
BOTH = {"GLIBC_TUNABLES": TUNED_MALLOC, "XLA_FLAGS": TUNED_XLA_FLAG, MARKER: "applied"}


@pytest.mark.parametrize(
    "environ, accelerator, expected",
    [
        (CPU, False, BOTH),
        ({}, False, BOTH),  # no JAX_PLATFORMS and no GPU/TPU plugin: CPU
        ({}, True, {}),  # a GPU or TPU plugin is installed
        ({"JAX_PLATFORMS": "cuda"}, False, {}),
        ({"JAX_PLATFORMS": "cuda,cpu"}, False, {}),
        ({"JAX_PLATFORMS": "cpu"}, True, BOTH),  # the user asked for CPU
        (CPU | {MARKER: "off"}, False, {}),  # already applied, or left alone on purpose
        (CPU | {"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}, False,
         {"XLA_FLAGS": TUNED_XLA_FLAG, MARKER: "applied"}),
        (CPU | {"XLA_FLAGS": "--xla_force_host_platform_device_count=2"}, False,
         BOTH | {"XLA_FLAGS": f"--xla_force_host_platform_device_count=2 {TUNED_XLA_FLAG}"}),
        (CPU | {"XLA_FLAGS": "--xla_cpu_experimental_ynn_fusion_type="}, False,
         {"GLIBC_TUNABLES": TUNED_MALLOC, MARKER: "applied"}),  # the user's own value of the flag
        (CPU | {"GLIBC_TUNABLES": "", "XLA_FLAGS": TUNED_XLA_FLAG}, False, {}),  # nothing left to set
    ],
)
def test_changes_only_on_cpu_and_never_over_the_users_settings(environ, accelerator, expected):
    assert changes(environ, accelerator, (0, 10)) == expected


def test_the_xla_flag_only_for_jaxlib_releases_that_know_it():
    assert changes(CPU, False, (0, 9)) == {"GLIBC_TUNABLES": TUNED_MALLOC, MARKER: "applied"}
    assert on_cpu({"JAX_PLATFORMS": " cpu , cpu"}, True) and not on_cpu({"JAX_PLATFORMS": "tpu"}, False)


def test_the_command_reexecutes_itself_once_with_the_settings():
    env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "XLA_FLAGS", MARKER)}
    env |= {"JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    done = subprocess.run([sys.executable, "-m", "sbjax.cli", "info", "--json"], capture_output=True, text=True,
                          env=env, check=True)  # fmt: skip
    info = json.loads(done.stdout)
    assert info["environment"]["GLIBC_TUNABLES"] == TUNED_MALLOC
    assert info["environment"]["XLA_FLAGS"] == f"--xla_force_host_platform_device_count=2 {TUNED_XLA_FLAG}"
    assert info["environment"][MARKER] == "applied" and info["backend"] == "cpu"
    assert len(info["devices"]) == 2  # XLA took the user's flag and sbjax's

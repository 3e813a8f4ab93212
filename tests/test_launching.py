"""Launched trials without launching: checks of processes_per_trial and accelerate configs, the command.

TRL's own shipped accelerate configs (trl/accelerate_configs) are validated as they are.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import trl
import yaml
from typer.testing import CliRunner

from sweep.cli import app
from sweep.engine.launch import gpu_envs, identity, launch_command, running
from sweep.engine.slurm import job_groups
from sweep.errors import UserError
from sweep.results import SweepFolder
from sweep.spec.launching import slurm_gpus
from sweep.spec.validate import load_recipe

TRL_CONFIGS = Path(trl.__file__).parent / "accelerate_configs"
HAVE_DEEPSPEED = importlib.util.find_spec("deepspeed") is not None


def write(tmp_path: Path, recipe: dict, config: dict | None = None) -> Path:
    if config is not None:
        (tmp_path / "accelerate.yaml").write_text(yaml.safe_dump(config))
        recipe.setdefault("execution", {})["accelerate_config"] = "accelerate.yaml"
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


def problems(path: Path) -> list[str]:
    """`posweep validate`'s lines for a recipe that must fail (exit 2, no traceback)."""
    result = CliRunner().invoke(app, ["validate", str(path)])
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    return [line.split(": ", 1)[1] for line in result.output.strip().splitlines()]


@pytest.mark.parametrize("name", sorted(p.name for p in TRL_CONFIGS.glob("*.yaml")))
def test_trl_shipped_accelerate_configs_validate_as_they_are(base_recipe, tmp_path, name):
    config = yaml.safe_load((TRL_CONFIGS / name).read_text())
    base_recipe["execution"] = {"processes_per_trial": 8, "accelerate_config": str(TRL_CONFIGS / name)}
    path = write(tmp_path, base_recipe)
    if config["distributed_type"] == "DEEPSPEED" and not HAVE_DEEPSPEED:
        assert problems(path) == [
            "execution.accelerate_config: DEEPSPEED needs the deepspeed package where trials run: "
            "pip install deepspeed"
        ]
        return
    recipe = load_recipe(path)
    command = launch_command(recipe, 29512, "cuda", Path("job.json"))
    assert command[command.index("--num_processes") + 1] == "8"  # the config's own count is replaced
    assert command[command.index("--config_file") + 1] == str(TRL_CONFIGS / name)
    if config["distributed_type"] == "DEEPSPEED":
        assert command[command.index("--gradient_accumulation_steps") + 1] == "16"  # the recipe's, not 1


@pytest.mark.parametrize(
    ("execution", "config", "methods", "expected"),
    [
        (
            {"devices": [0, 1, 2], "processes_per_trial": 2},
            None,
            None,
            "execution.processes_per_trial: 2 does not divide the 3 devices listed",
        ),
        (
            {"processes_per_trial": 2, "slurm": {"gpus_per_worker": 3}},
            None,
            None,
            "execution.slurm.gpus_per_worker: 3 is not a multiple of processes_per_trial (2)",
        ),
        (
            {"devices": "cpu"},
            {"distributed_type": "FSDP"},
            None,
            "execution.accelerate_config: FSDP needs GPUs: accelerate runs CPU processes as plain data "
            "parallel (devices: cpu)",
        ),
        (
            {},
            {"distributed_type": "FSDP", "fsdp_config": {"fsdp_version": 2}},
            {"tr-dpo": None},
            "execution.accelerate_config: tr-dpo updates its reference from the policy every tau steps, "
            "and TRL gathers the policy's parameters for that under DeepSpeed ZeRO-3 only, not under FSDP "
            "(use ZeRO-3)",
        ),
        (
            {},
            {"distributed_type": "MULTI_GPU", "num_machines": 2},
            None,
            "execution.accelerate_config: num_machines must be 1: a trial's processes run on one machine "
            "(a worker's GPUs)",
        ),
        (
            {},
            {"distributed_type": "XLA"},
            None,
            "execution.accelerate_config: distributed_type 'XLA' is not supported (use one of NO, MULTI_GPU, "
            "MULTI_CPU, DEEPSPEED, FSDP)",
        ),
        (
            {"accelerate_config": "missing.yaml"},
            None,
            None,
            "execution.accelerate_config: cannot read missing.yaml: No such file or directory",
        ),
    ],
)
def test_multi_process_settings_that_cannot_run_are_rejected_with_the_reason(
    base_recipe, tmp_path, execution, config, methods, expected
):
    base_recipe["execution"] = dict(execution)
    if methods is not None:
        base_recipe["methods"] = methods
    path = write(tmp_path, base_recipe, config)
    assert expected in problems(path)
    assert {p.name for p in tmp_path.iterdir()} <= {"accelerate.yaml", "recipe.yaml"}  # nothing written


def test_pruning_is_rejected_for_launched_trials(base_recipe, tmp_path):
    base_recipe["execution"] = {"processes_per_trial": 2}
    base_recipe["search"] = {"pruner": "median"}
    base_recipe["eval"] = {"every_steps": 2}
    assert problems(write(tmp_path, base_recipe)) == [
        "search.pruner: pruning needs a trial's reports in the worker; launched trials cannot prune yet"
    ]


def test_lora_under_zero3_is_rejected(base_recipe, tmp_path):
    base_recipe["model"] = {"path": "builtin:toy", "lora": {"r": 4}}
    zero3 = {"distributed_type": "DEEPSPEED", "deepspeed_config": {"zero_stage": 3}}
    assert (
        "execution.accelerate_config: model.lora under FSDP or ZeRO-3: posweep gathers a sharded policy's "
        "full weights for evaluation into a full model, not into adapters yet (use ZeRO-2 or DDP with LoRA, "
        "or full fine-tuning)"
    ) in problems(write(tmp_path, base_recipe, zero3))


def test_the_launch_command_and_gpu_groups(base_recipe, tmp_path):
    base_recipe["execution"] = {"devices": "cpu", "processes_per_trial": 2}
    recipe = load_recipe(write(tmp_path, base_recipe))
    command = launch_command(recipe, 29513, "cpu", Path("job.json"))
    assert command[command.index("--main_process_port") + 1] == "29513"
    assert command[command.index("--mixed_precision") + 1] == "no"  # precision auto on CPU: fp32
    assert "--multi_gpu" in command and command[-3:] == ["-m", "sweep.engine.rank", "job.json"]
    assert slurm_gpus(recipe) == 2  # a SLURM worker job gets one trial's GPUs unless told more
    envs = gpu_envs(list(range(8)), 2, None)
    assert [env["CUDA_VISIBLE_DEVICES"] for env in envs] == ["0,1", "2,3", "4,5", "6,7"]  # 4 trials at once
    with pytest.raises(UserError, match="processes_per_trial: 3 does not divide the 8 GPUs"):
        gpu_envs(list(range(8)), 3, None)


@pytest.mark.parametrize(
    ("execution", "groups"),
    [
        ({"processes_per_trial": 2}, ["0,1", "2,3", "4,5", "6,7"]),  # 8 GPUs, k = 2: 4 trials at a time
        (
            {"processes_per_trial": 4, "accelerate_config": str(TRL_CONFIGS / "fsdp2.yaml")},
            ["0,1,2,3", "4,5,6,7"],
        ),
        ({}, []),  # one GPU per trial: the job's single worker, as before
        ({"processes_per_trial": 2, "devices": "cpu"}, []),
    ],
)
def test_a_slurm_job_of_8_gpus_runs_8_over_k_workers(base_recipe, tmp_path, monkeypatch, execution, groups):
    base_recipe["execution"] = execution
    SweepFolder(tmp_path).write_recipe(load_recipe(write(tmp_path, base_recipe)).dump())
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2,3,4,5,6,7")  # what SLURM gives a job of 8 GPUs
    assert job_groups(str(tmp_path)) == groups


def test_a_watched_worker_counts_as_gone_once_dead_a_zombie_or_its_pid_reused():
    assert running(identity(psutil.Process()))
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    watched = identity(psutil.Process(child.pid))
    deadline = time.monotonic() + 30
    while psutil.Process(child.pid).status() != psutil.STATUS_ZOMBIE:  # exited, not yet reaped
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert not running(watched)
    child.wait()
    assert not running(watched)  # reaped: the pid is gone
    reused = {**identity(psutil.Process()), "started": psutil.Process().create_time() - 5}
    assert not running(reused)  # another process now holds the pid

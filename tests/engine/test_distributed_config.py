"""The Lightning trainer built for a multi-node run, inspected without launching anything.

README.md ("Training on a GPU cluster") says what ``--devices/--num-nodes/--strategy`` do: the
trainer gets them as they are; Lightning starts the processes of this node itself unless a
cluster launcher (SLURM's srun, torchrun) already started one per device, which it then detects
from the environment. These tests hold the trainer to that.
"""

from __future__ import annotations

import pytest
from lightning.pytorch.callbacks import Callback

from helpers import quick_config
from medlens.engine.train import _trainer

TORCHRUN_ENV = {"TORCHELASTIC_RUN_ID": "medlens", "MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "29500",
                "WORLD_SIZE": "4", "RANK": "2", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "2", "GROUP_RANK": "1"}
SLURM_ENV = {"SLURM_NTASKS": "4", "SLURM_NTASKS_PER_NODE": "2", "SLURM_JOB_NAME": "medlens", "SLURM_PROCID": "2",
             "SLURM_LOCALID": "0", "SLURM_NODEID": "1", "SLURM_JOB_ID": "77", "SLURM_NODELIST": "gpu[01-02]"}


def _two_node_trainer(tmp_path, **train):
    config = quick_config(data={"spec": "breastmnist"},
                          train={"devices": 2, "num_nodes": 2, "strategy": "ddp", "epochs": 1, **train})
    return _trainer(config, tmp_path, Callback())


@pytest.fixture
def clean_env(monkeypatch):
    for name in (*TORCHRUN_ENV, *SLURM_ENV):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_two_nodes_of_two_devices_make_one_ddp_job_of_four_processes(tmp_path, clean_env):
    from lightning.fabric.plugins.environments import LightningEnvironment
    from lightning.pytorch.strategies import DDPStrategy
    from lightning.pytorch.strategies.launchers import _SubprocessScriptLauncher

    trainer = _two_node_trainer(tmp_path)
    assert isinstance(trainer.strategy, DDPStrategy)
    assert trainer.num_nodes == 2 and trainer.num_devices == 2 and trainer.world_size == 4
    # Started by hand on each node (NODE_RANK, MASTER_ADDR set by the user): Lightning re-runs the
    # command once per further device of its node.
    assert isinstance(trainer.strategy.cluster_environment, LightningEnvironment)
    assert isinstance(trainer.strategy._launcher, _SubprocessScriptLauncher)
    assert trainer.strategy._get_process_group_backend() == "gloo"  # CPU here; nccl on GPUs
    assert not trainer._accelerator_connector.use_distributed_sampler  # medlens shards its own batches


def test_under_torchrun_the_launched_processes_are_used(tmp_path, clean_env):
    from lightning.fabric.plugins.environments import TorchElasticEnvironment

    for name, value in TORCHRUN_ENV.items():
        clean_env.setenv(name, value)
    trainer = _two_node_trainer(tmp_path)
    assert isinstance(trainer.strategy.cluster_environment, TorchElasticEnvironment)
    assert trainer.strategy._launcher is None or not trainer.strategy._launcher.is_interactive_compatible
    assert trainer.global_rank == 2 and trainer.node_rank == 1 and trainer.world_size == 4


def test_under_slurm_the_tasks_srun_started_are_used(tmp_path, clean_env):
    from lightning.fabric.plugins.environments import SLURMEnvironment

    for name, value in SLURM_ENV.items():
        clean_env.setenv(name, value)
    trainer = _two_node_trainer(tmp_path)
    assert isinstance(trainer.strategy.cluster_environment, SLURMEnvironment)
    assert trainer.global_rank == 2 and trainer.node_rank == 1 and trainer.world_size == 4

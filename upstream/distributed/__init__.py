"""Distributed PyTorch training (the Training Operator's job) on one machine.

A ``PyTorchJob`` manifest (``kubeflow.org/v1``: Master/Worker replicas, ``nprocPerNode``) runs
locally as N processes on ``torch.distributed`` (DDP, gloo) under PyTorch's elastic agent:
checkpoints every epoch, resumes after a worker dies, and writes the model folder the training
components write (``turnout serve`` loads it). The same manifest goes to a cluster's Training
Operator (rendered and checked here). See docs/tuning.md.

Importing this package imports neither torch nor MLflow.
"""

from upstream.distributed.job import JobError, LocalPlan, PyTorchJob, load_job, local_plan, render
from upstream.distributed.launch import DistributedError, DistributedResult, run

__all__ = ["DistributedError", "DistributedResult", "JobError", "LocalPlan", "PyTorchJob", "load_job",
           "local_plan", "render", "run"]

"""GPU pinning and CPU threads. Pinning must happen before torch is imported."""

from __future__ import annotations

import os

THREADS_ENV = "MLQ_TORCH_THREADS"  # cores this worker process owns; set by `mlq worker`


def pin_gpu(gpu: int | None) -> None:
    """Make only GPU ``gpu`` visible to this process (and its children); None leaves it as is."""
    if gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(gpu)
        os.environ["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"  # the numbers nvidia-smi shows


def hide_gpus() -> None:
    os.environ["CUDA_VISIBLE_DEVICES"] = ""


def configure_torch_threads() -> None:
    threads = int(os.environ.get(THREADS_ENV) or 0)
    if threads > 0:
        import torch

        torch.set_num_threads(threads)

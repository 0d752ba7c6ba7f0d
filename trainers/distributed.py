"""Training on several processes: `torchrun --nproc_per_node N train.py ...`.

Each process trains on its share of every batch: DATALOADER.TRAIN_X.BATCH_SIZE stays the global
batch (so configs and learning rates keep their meaning) and each of the N processes takes
BATCH_SIZE / N of it, drawn by a sampler seeded with (SEED, epoch) alone, so the union of the shares
is the batch one process would draw with the same sampler. Gradients are averaged over the processes
before every optimiser step (what DistributedDataParallel does; done on the registered parameters
because the trainers call their models' encoders, not one forward that DDP could wrap). Trainable
parameters start from rank 0's. Only rank 0 writes: the run record, logs, tensorboard, checkpoints
and evaluations. Backend: NCCL on CUDA, gloo on the CPU.
"""
import os
import sys

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, DistributedSampler

from .losses import top1_classes


def launched_by_torchrun():
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_from_environment(use_cuda):
    """Join the process group torchrun describes (no-op for a single process); CUDA ranks take LOCAL_RANK's GPU."""
    if not launched_by_torchrun() or dist.is_initialized():
        return
    cuda = use_cuda and torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if cuda else "gloo")


def leave():
    """Leave the process group at the end of a run (no-op for a single process)."""
    if dist.is_initialized():
        dist.destroy_process_group()


def rank():
    return dist.get_rank() if dist.is_initialized() else 0


def world_size():
    return dist.get_world_size() if dist.is_initialized() else 1


def is_main_process():
    return rank() == 0


def barrier():
    if dist.is_initialized():
        dist.barrier()


def silence_other_ranks():
    """Ranks other than 0 print nothing (errors still reach stderr)."""
    if not is_main_process():
        sys.stdout = open(os.devnull, "w")


def broadcast_parameters(modules):
    """Every parameter of `modules` takes rank 0's values, as DistributedDataParallel does at construction."""
    if world_size() == 1:
        return
    for module in modules:
        for param in module.parameters():
            dist.broadcast(param.data, src=0)


def average_gradients(params):
    """Each gradient becomes the mean over the processes."""
    if world_size() == 1:
        return
    for param in params:
        if param.grad is not None:
            dist.all_reduce(param.grad)
            param.grad /= world_size()


def average_scalars(values):
    """{name: float} averaged over the processes (the loss summary every rank logs as rank 0 does)."""
    if world_size() == 1 or not values:
        return values
    names = list(values)  # every rank's summary has the same keys in the same order
    tensor = torch.tensor([float(values[name]) for name in names], dtype=torch.float64)
    if dist.get_backend() == "nccl":
        tensor = tensor.cuda()
    dist.all_reduce(tensor)
    return {name: value / world_size() for name, value in zip(names, tensor.tolist())}


def per_process_batch(global_batch, what):
    """This process's share of a global batch of `global_batch` items (`what` names them in the error)."""
    processes = world_size()
    if global_batch % processes:
        raise ValueError(
            f"DATALOADER.TRAIN_X.BATCH_SIZE gives {global_batch} {what} per batch, which {processes} processes "
            f"cannot share equally: make it a multiple of {processes} (it stays the global batch)"
        )
    return global_batch // processes


def seeded_loader(dataset, global_batch, what, seed, drop_last, **loader_args):
    """A training DataLoader whose order depends on (seed, epoch) only (call `loader.sampler.set_epoch`), each of
    the processes reading its share of every global batch."""
    sampler = DistributedSampler(dataset, num_replicas=world_size(), rank=rank(), shuffle=True, seed=seed,
                                 drop_last=drop_last)
    return DataLoader(dataset, batch_size=per_process_batch(global_batch, what), sampler=sampler,
                      drop_last=drop_last, **loader_args)


def global_top1_classes(teacher_prob):
    """L_diff2's Y for the whole global batch: the union of every process's distinct teacher top-1 classes,
    so each process computes the term a single process would (and their averaged gradients are its gradient)."""
    classes = top1_classes(teacher_prob)
    if world_size() == 1:
        return classes
    present = torch.zeros(teacher_prob.shape[1], device=teacher_prob.device)
    present[classes] = 1.0
    dist.all_reduce(present, op=dist.ReduceOp.MAX)
    return present.nonzero().flatten()

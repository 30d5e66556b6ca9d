"""Pipelines around lplr-index: dataset readers, image/text embedders with an on-disk
cache, and the LPLR paper's 3-NN experiment (``python -m pipelines.experiment``).

Submodules are imported explicitly (``from pipelines.datasets import load_cifar10``);
torch, torchvision and sentence-transformers are only imported when an embedder runs.
"""

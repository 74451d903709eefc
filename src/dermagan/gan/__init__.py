"""Generative augmentation: DCGAN (per-class and class-conditional), DiffAugment, EMA, training."""

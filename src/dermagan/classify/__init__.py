"""Classifier backbones, classic augmentation, training and inference."""

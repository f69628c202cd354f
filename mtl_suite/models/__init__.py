"""Backbones (registry), stage heads, ImageNet weights and weight transfer between stages."""

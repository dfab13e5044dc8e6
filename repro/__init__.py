"""Reproduction toolkit: how adversarial perturbations propagate through feature-denoising networks."""

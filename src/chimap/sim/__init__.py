"""Simulation: analytic phantoms, a realistic head, MR signal models and ground truth."""

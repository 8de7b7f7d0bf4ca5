"""Projection: a job run on fake tensors, its time and memory estimated for a named device. Never a measurement."""

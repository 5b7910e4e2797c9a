"""Benchmark table: fit every method on the training labels, predict, score the test slices."""

"""Parity runs: the methods' official code on our data, model size and FLOPs budget (see README.md here)."""

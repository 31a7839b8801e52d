"""Benchmarks of nix-hive: run them as modules from the repository root (see the Makefile)."""

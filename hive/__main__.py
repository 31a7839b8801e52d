"""`python -m hive` is the nix-hive command."""

from hive.cli import entry

entry()

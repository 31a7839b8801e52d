"""nix-hive: build a few NixOS systems once, deploy them to many hosts through Nix stores."""

__version__ = "0.2.0"

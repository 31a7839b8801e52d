"""This checkout's doit door: the one a deployment's directory has (`nix-hive init` writes it
there), for `doit -f dodo.py config=DIR …` from here. See hive/dodo.py and docs/doit.md."""

from hive.dodo import *  # noqa: F403

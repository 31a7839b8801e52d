# The deployment's value, from one of two sources named by the environment (needs --impure),
# so no path or flake reference is ever spliced into Nix source text:
# - NIX_HIVE_FLAKE (a flake reference) and NIX_HIVE_ATTR (an attribute path of its outputs,
#   "nixHive" by default): the flake form, pinned by the flake's lock file;
# - otherwise NIX_HIVE_DEPLOYMENT (an absolute file name): a deployment file, hive.nix.
let
  flake = builtins.getEnv "NIX_HIVE_FLAKE";
  attr = builtins.getEnv "NIX_HIVE_ATTR";
  names = builtins.filter builtins.isString (builtins.split "\\." (if attr == "" then "nixHive" else attr));
  outputs = builtins.getFlake flake;
  pick = v: name:
    if builtins.isAttrs v && v ? ${name} then v.${name}
    else throw "the flake ${flake} has no output ${builtins.concatStringsSep "." names}";
in
if flake != "" then builtins.foldl' pick outputs names
else import (/. + builtins.getEnv "NIX_HIVE_DEPLOYMENT")

# Turns a deployment file into the inventory nix-hive works from, as JSON, building nothing.
#
# The deployment comes from deployment.nix (a file, or a flake output). Nothing here copies
# anything into the Nix store: path literals become their absolute file name with `toString`
# (a secret such as `signingKey = ./key.sec` must never be interpolated, which would copy it
# into the store), configurations and specialArgs are only looked at for their type, never
# evaluated, and a system's `nixpkgs` (a flake input or a checkout) becomes its path. (A
# flake's own source is in the store already: the flake form keeps secrets outside it.)
#
# `paths` are evaluated only for what builds (NIX_HIVE_PATHS=lazy otherwise): a NIX_PATH entry
# may be a `builtins.fetchTarball`, and `list`, `ssh`, `plan` or `check` need no nixpkgs (nor
# the network). Lazily, each entry's value is the string "unevaluated" (its name is kept);
# evaluated, an error in it names the entry (the context nix-hive finds in the trace).
let
  hive = import ./deployment.nix;
  inherit (builtins) typeOf mapAttrs removeAttrs;
  lazy = builtins.getEnv "NIX_HIVE_PATHS" == "lazy";

  # Any value, made JSON-safe. Functions and derivations become a marker object that the
  # schema rejects wherever a plain value is expected, with a message naming the attribute.
  clean = v:
    let t = typeOf v; in
    if t == "path" then toString v
    else if t == "lambda" then { __nixType = "function"; }
    else if t == "set" then
      (if v ? outPath then { __nixType = "derivation"; } else mapAttrs (_: clean) v)
    else if t == "list" then map clean v
    else v;

  # `where`: the attribute path of this `paths` (a list of names, as JSON in the context)
  paths = where: v:
    if typeOf v != "set" then clean v
    else if lazy then mapAttrs (_: _: "unevaluated") v
    else mapAttrs (n: e: builtins.addErrorContext
      "while evaluating the NIX_PATH entry ${builtins.toJSON (where ++ [ n ])}" (clean e)) v;

  # a flake input or a derivation: its store path; a path literal: its file name
  source = v: if typeOf v == "set" && v ? outPath then toString v.outPath else clean v;
  system = name: s:
    if typeOf s != "set" then clean s
    else clean (removeAttrs s [ "configuration" "specialArgs" "nixpkgs" "paths" ])
      // (if s ? paths then { paths = paths [ "systems" name "paths" ] s.paths; } else { })
      // (if s ? configuration then { configuration = typeOf s.configuration; } else { })
      // (if s ? specialArgs then { specialArgs = typeOf s.specialArgs; } else { })
      // (if s ? nixpkgs then { nixpkgs = source s.nixpkgs; } else { });

  top =
    if typeOf hive != "set" then clean hive
    else clean (removeAttrs hive [ "systems" "paths" ])
      // (if hive ? paths then { paths = paths [ "paths" ] hive.paths; } else { })
      // (if hive ? systems then {
        systems = if typeOf hive.systems == "set" then mapAttrs system hive.systems else clean hive.systems;
      } else { });
in
top

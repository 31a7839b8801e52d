# Turns a deployment file into the inventory nix-hive works from, as JSON, building nothing.
#
# The file is named by NIX_HIVE_DEPLOYMENT (an absolute path; needs --impure), so no path is
# ever spliced into Nix source text. Nothing here copies anything into the Nix store: path
# literals become their absolute file name with `toString` (a secret such as
# `signingKey = ./key.sec` must never be interpolated, which would copy it into the store),
# and configurations are only looked at for their type, never evaluated.
let
  file = builtins.getEnv "NIX_HIVE_DEPLOYMENT";
  hive = import (/. + file);
  inherit (builtins) typeOf mapAttrs removeAttrs;

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

  system = _: s:
    if typeOf s != "set" then clean s
    else clean (removeAttrs s [ "configuration" ])
      // (if s ? configuration then { configuration = typeOf s.configuration; } else { });

  top =
    if typeOf hive != "set" then clean hive
    else clean (removeAttrs hive [ "systems" ])
      // (if hive ? systems then {
        systems = if typeOf hive.systems == "set" then mapAttrs system hive.systems else clean hive.systems;
      } else { });
in
top

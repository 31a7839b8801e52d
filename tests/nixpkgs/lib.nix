# A tiny subset of nixpkgs' lib: enough for the module stand-in in ./nixos.
let
  lib = {
    inherit (builtins) attrNames concatLists filter foldl' head tail length map;
    id = x: x;
    last = xs: builtins.elemAt xs (builtins.length xs - 1);
    optional = c: x: if c then [ x ] else [ ];
    optionals = c: xs: if c then xs else [ ];
    optionalString = c: s: if c then s else "";
    concatStringsSep = builtins.concatStringsSep;
    mkDefault = x: x;
    mkForce = x: x;
    mkOverride = _: x: x;
    mkIf = c: x: if c then x else { };
    mkMerge = xs: { _merge = xs; };
    mkOption = _: null;
    mkEnableOption = _: null;
    types = { };
  };
in
lib

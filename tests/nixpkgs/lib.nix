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
    # pushed down one level by the stand-in's merge (nixos/default.nix), as NixOS pushes it down
    mkIf = c: x: { _type = "if"; condition = c; content = x; };
    mkMerge = xs: { _merge = xs; };
    # an option's declaration: the stand-in reads its `default` only (types are not checked)
    mkOption = o: o // { _type = "option"; };
    mkEnableOption = what: { _type = "option"; default = false; description = "Whether to enable ${what}."; };
    types = let t = name: { inherit name; }; in {
      str = t "str"; bool = t "bool"; int = t "int"; path = t "path"; package = t "package";
      ints = { positive = t "positive integer"; unsigned = t "unsigned integer"; };
      nullOr = x: t "null or ${x.name}"; listOf = x: t "list of ${x.name}"; attrsOf = x: t "attribute set of ${x.name}";
    };
  };
in
lib

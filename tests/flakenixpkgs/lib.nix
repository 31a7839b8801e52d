# The few nixpkgs lib functions nix-hive's Nix files use, with nixpkgs' meaning.
let
  lib = rec {
    genAttrs = names: f: builtins.listToAttrs (map (n: { name = n; value = f n; }) names);
    hasPrefix = pre: s: builtins.substring 0 (builtins.stringLength pre) s == pre;
    hasSuffix = suf: s:
      let ls = builtins.stringLength s; lf = builtins.stringLength suf;
      in lf <= ls && builtins.substring (ls - lf) lf s == suf;
    removePrefix = pre: s:
      if hasPrefix pre s
      then builtins.substring (builtins.stringLength pre) (builtins.stringLength s) s
      else s;
    splitString = sep: s: builtins.filter builtins.isString (builtins.split (escapeRegex sep) s);
    escapeRegex = builtins.replaceStrings
      [ "\\" "[" "]" "{" "}" "(" ")" "^" "$" "." "|" "*" "+" "?" ]
      [ "\\\\" "\\[" "\\]" "\\{" "\\}" "\\(" "\\)" "\\^" "\\$" "\\." "\\|" "\\*" "\\+" "\\?" ];
    makeBinPath = drvs: builtins.concatStringsSep ":" (map (d: "${d}/bin") drvs);
    # nixpkgs' cleanSourceFilter: drop VCS folders, editor backups, result links, sockets.
    cleanSourceFilter = name: type:
      let base = baseNameOf (toString name);
      in !((type == "directory" && builtins.elem base [ ".git" ".svn" ".hg" "CVS" ])
        || hasSuffix "~" base || builtins.match "^\\.sw[a-z]$" base != null
        || builtins.match "^\\..*\\.sw[a-z]$" base != null
        || hasSuffix ".o" base || hasSuffix ".so" base
        || (type == "symlink" && hasPrefix "result" base)
        || type == "unknown");
    # Like nixpkgs': an attrset with outPath (the filtered copy) and origSrc (the unfiltered path).
    cleanSourceWith = { src, filter ? (_: _: true), name ? "source" }: {
      outPath = builtins.path { path = src; inherit name filter; };
      origSrc = src;
      inherit filter name;
    };
    cleanSource = src: cleanSourceWith { inherit src; filter = cleanSourceFilter; };
    licenses.mit = { spdxId = "MIT"; shortName = "mit"; };
    platforms = {
      linux = [ "x86_64-linux" "aarch64-linux" ];
      darwin = [ "x86_64-darwin" "aarch64-darwin" ];
      unix = platforms.linux ++ platforms.darwin;
    };
  };
in
lib

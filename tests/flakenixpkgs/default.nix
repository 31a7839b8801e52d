# Stand-in for nixpkgs' package set (also usable as -I nixpkgs=<this folder>), for
# tests/test_flake.py only.  Every package is a trivial real derivation (builder: the host's
# /usr/bin/sh, PATH=/usr/bin; in Nix's sandbox it needs the machine's /usr as a sandbox path,
# as tests/constants.py's NIX_CONFIG gives it) that keeps its arguments under
# `standin`, so a test can check what nix-hive's expressions asked for, and build it cheaply:
#
# - python3Packages.<lib>: an empty output with pname set.
# - nix, openssh, jq: bin/ links to the host's programs (or stubs that exit 127).
# - python3Packages.buildPythonApplication: lays pyproject.toml's [tool.setuptools] packages and
#   package-data out under lib/site like the wheel would, and writes bin/<name> for each
#   [project.scripts] entry: it applies makeWrapperArgs (--prefix/--suffix/--set), puts lib/site
#   first on PYTHONPATH and runs the entry point (bin/.<name>-wrapped, as in nixpkgs) with the
#   `python3` found on PATH.  The dependencies are NOT installed: the caller's python3 must have them.
{ system ? builtins.currentSystem, ... }:
let
  lib = import ./lib.nix;
  inherit (builtins) concatStringsSep concatMap attrNames attrValues length elemAt dirOf;

  mkDrv = name: script: attrs: derivation ({
    inherit name system;
    builder = "/usr/bin/sh";
    args = [ "-c" script ];
    PATH = "/usr/bin";
  } // attrs);

  pyLib = pname: mkDrv "python3-${pname}-standin" "mkdir -p $out/lib" { inherit pname; };

  tool = pname: programs: mkDrv "${pname}-standin" ''
    mkdir -p $out/bin
    for p in ${concatStringsSep " " programs}; do
      if real=$(command -v "$p"); then ln -s "$real" "$out/bin/$p"
      else printf '#!/bin/sh\necho "%s: not on this host (stand-in)" >&2\nexit 127\n' "$p" > "$out/bin/$p"
           chmod +x "$out/bin/$p"
      fi
    done
  '' { inherit pname; };

  shellQuote = s: "'" + builtins.replaceStrings [ "'" ] [ "'\\''" ] s + "'";

  # makeWrapper's flags, as shell lines.
  wrapperLines = a:
    if a == [ ] then [ ]
    else
      let flag = elemAt a 0; at = elemAt a; drop = n: builtins.genList (i: at (i + n)) (length a - n);
      in
      if flag == "--prefix" then
        [ "export ${at 1}=${shellQuote (at 3)}\${${at 1}:+${shellQuote (at 2)}\$${at 1}}" ] ++ wrapperLines (drop 4)
      else if flag == "--suffix" then
        [ "export ${at 1}=\${${at 1}:+\$${at 1}${shellQuote (at 2)}}${shellQuote (at 3)}" ] ++ wrapperLines (drop 4)
      else if flag == "--set" then
        [ "export ${at 1}=${shellQuote (at 2)}" ] ++ wrapperLines (drop 3)
      else throw "stand-in makeWrapper: unsupported flag ${flag}";

  buildPythonApplication = args@{ pname, version, src, dependencies ? [ ], build-system ? [ ], makeWrapperArgs ? [ ], meta ? { }, ... }:
    let
      isPyproject = (args.pyproject or false) || (args.format or "") == "pyproject";
      toml = builtins.fromTOML (builtins.readFile "${toString (src.origSrc or src)}/pyproject.toml");
      st = toml.tool.setuptools or { };
      scripts = toml.project.scripts or { };
      slash = builtins.replaceStrings [ "." ] [ "/" ];
      layout = concatMap (p:
        let from = (st.package-dir or { }).${p} or (slash p); to = slash p; in
        # the package's modules, and its package-data globs (host/*.sh: into host/)
        [ "mkdir -p $out/lib/site/${to}"
          "for f in $src/${from}/*.py; do if [ -e \"$f\" ]; then cp \"$f\" $out/lib/site/${to}/; fi; done" ]
        ++ concatMap (g: [ "mkdir -p $out/lib/site/${to}/${dirOf g}" "cp $src/${from}/${g} $out/lib/site/${to}/${dirOf g}/" ])
          ((st.package-data or { }).${p} or [ ]))
        (st.packages or (throw "stand-in: only [tool.setuptools] packages = [...] is understood"));
      entry = name:
        let parts = lib.splitString ":" scripts.${name}; mod = elemAt parts 0; fun = elemAt parts 1; in ''
          cat > $out/bin/${name} <<'SCRIPT'
          #!/bin/sh
          ${concatStringsSep "\n" (wrapperLines makeWrapperArgs)}
          export PYTHONPATH=@out@/lib/site''${PYTHONPATH:+:$PYTHONPATH}
          exec python3 @out@/bin/.${name}-wrapped "$@"
          SCRIPT
          cat > $out/bin/.${name}-wrapped <<'SCRIPT'
          import sys
          sys.argv[0] = "${name}"
          from ${mod} import ${fun}
          sys.exit(${fun}())
          SCRIPT
          sed -i "s|@out@|$out|g" $out/bin/${name}
          chmod +x $out/bin/${name}
        '';
    in
    assert isPyproject || throw "stand-in buildPythonApplication: set pyproject = true (or format = \"pyproject\")";
    assert !(args ? pyproject && args ? format) || throw "stand-in buildPythonApplication: pyproject and format are exclusive";
    assert build-system != [ ] || throw "stand-in buildPythonApplication: build-system is empty";
    mkDrv "${pname}-${version}" ''
      set -e
      mkdir -p $out/bin
      ${concatStringsSep "\n" layout}
      ${concatStringsSep "\n" (map entry (attrNames scripts))}
    '' {
      inherit pname version;
      src = "${src}";
      # Referenced so that they are built (and in the closure), as propagated inputs would be.
      propagated = dependencies ++ build-system;
    } // { inherit meta; standin = { inherit args; kind = "buildPythonApplication"; }; };

  python3Packages = {
    inherit buildPythonApplication python;
    buildPythonPackage = buildPythonApplication;
  } // lib.genAttrs [
    "doit" "sh" "jsonschema" "tabulate" "setuptools" "pytest" "mypy" "ruff"
    "types-tabulate" "types-jsonschema"
  ] pyLib;

  python = mkDrv "python3-standin" "mkdir -p $out/bin; ln -s \"$(command -v python3)\" $out/bin/python3" { pname = "python3"; }
    // {
    pkgs = python3Packages;
    withPackages = f:
      let ps = f python3Packages; in
      mkDrv "python3-env-standin" "mkdir -p $out/bin; ln -s \"$(command -v python3)\" $out/bin/python3"
        { pname = "python3-env"; pythonPackages = ps; }
      // { standin = { kind = "withPackages"; packages = ps; }; };
  };

  mkShell = args@{ packages ? [ ], ... }:
    mkDrv (args.name or "nix-shell") "echo standin-shell > $out" { inherit packages; }
    // { standin = { kind = "mkShell"; inherit args; }; };

  pkgs = {
    inherit lib system python3Packages mkShell;
    python3 = python;
    stdenv.hostPlatform.system = system;
    nix = tool "nix" [ "nix" "nix-store" "nix-env" "nix-instantiate" "nix-build" ];
    openssh = tool "openssh" [ "ssh" "scp" "ssh-keygen" ];
    jq = tool "jq" [ "jq" ];
    ruff = tool "ruff" [ "ruff" ];
    makeWrapper = mkDrv "make-wrapper-standin" "mkdir -p $out" { };
    # nixpkgs' callPackage: fill the function's arguments from the package set, then overrides;
    # a missing argument without a default is an error, as in nixpkgs.
    callPackage = fn: overrides:
      let
        f = if builtins.isFunction fn then fn else import fn;
        wanted = builtins.functionArgs f;
        given = builtins.intersectAttrs wanted pkgs // overrides;
        missing = builtins.filter (n: !wanted.${n} && !(given ? ${n})) (attrNames wanted);
      in
      if missing != [ ] then throw "stand-in callPackage: no package for argument(s) ${concatStringsSep ", " missing}"
      else f given;
  };
in
pkgs

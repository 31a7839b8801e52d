# The nix-hive package, shared by flake.nix (packages, overlays.default) and default.nix:
#
#   pkgs.callPackage ./nix/package.nix { }
#
# Name, version and description come from pyproject.toml, so there is one place to bump.
# (This folder is also shipped inside the Python package as hive._data.nix; nix-hive only ever
# reads eval.nix and build.nix from it, this file is inert there.)
{ lib, python3Packages, nix, openssh }:
let
  root = ../.;
  project = (builtins.fromTOML (builtins.readFile ../pyproject.toml)).project;

  # What the wheel is built from, and nothing else: no .venv, caches, egg-info, tests, examples,
  # result links or editor droppings, so unrelated edits do not rebuild the package.
  keep = [ "pyproject.toml" "README.md" "LICENSE" "hive" "nix" "schemas" ];
  src = lib.cleanSourceWith {
    name = "nix-hive-source";
    src = root;
    filter = path: type:
      let
        rel = lib.removePrefix "${toString root}/" (toString path);
        top = builtins.head (lib.splitString "/" rel);
        base = baseNameOf (toString path);
      in
      lib.cleanSourceFilter path type
      && builtins.elem top keep
      && base != "__pycache__"
      && !(lib.hasSuffix ".pyc" base);
  };
in
python3Packages.buildPythonApplication {
  pname = project.name;
  inherit (project) version;
  pyproject = true;
  inherit src;

  build-system = [ python3Packages.setuptools ];
  dependencies = with python3Packages; [ doit sh jsonschema tabulate ];

  # nix-hive runs nix, nix-store, nix-env, ssh and scp.
  # --suffix: the host's own nix (the one matching its daemon) and ssh win when present.
  makeWrapperArgs = [ "--suffix" "PATH" ":" (lib.makeBinPath [ nix openssh ]) ];

  pythonImportsCheck = [ "hive" "hive.cli" ];
  # The test suite needs root, namespaces, sshd and a Nix store of its own: `make test`.
  doCheck = false;

  meta = {
    inherit (project) description;
    license = lib.licenses.mit;
    mainProgram = "nix-hive";
    platforms = lib.platforms.unix;
  };
}

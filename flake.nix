{
  description = "nix-hive: build a few NixOS systems once, deploy them to many hosts through Nix stores";

  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-unstable";

  outputs = { self, nixpkgs }:
    let
      systems = [ "x86_64-linux" "aarch64-linux" "x86_64-darwin" "aarch64-darwin" ];
      forAllSystems = f: nixpkgs.lib.genAttrs systems (system: f system nixpkgs.legacyPackages.${system});
    in
    {
      # pull mode's agent (docs/pull-agent.md): services.nix-hive-agent
      nixosModules.agent = import ./nix/agent.nix;

      overlays.default = final: prev: {
        nix-hive = final.callPackage ./nix/package.nix { };
      };

      packages = forAllSystems (system: pkgs:
        let nix-hive = pkgs.callPackage ./nix/package.nix { };
        in { inherit nix-hive; default = nix-hive; });

      apps = forAllSystems (system: pkgs:
        let app = { type = "app"; program = "${self.packages.${system}.nix-hive}/bin/nix-hive"; };
        in { nix-hive = app; default = app; });

      devShells = forAllSystems (system: pkgs: {
        default = pkgs.mkShell {
          packages = [
            (pkgs.python3.withPackages (ps: with ps; [
              doit sh jsonschema tabulate setuptools
              pytest mypy types-tabulate types-jsonschema
            ]))
            pkgs.ruff
            pkgs.nix
            pkgs.openssh
            pkgs.jq
          ];
          # Run the checkout: `python -m hive.cli ...`, pytest, mypy, ruff from the top folder.
          shellHook = ''
            export PYTHONPATH="$PWD''${PYTHONPATH:+:$PYTHONPATH}"
          '';
        };
      });
    };
}

# The seed's example as a flake: a jump host that is also the relay store (portico), and web
# servers behind it, built with the nixpkgs that flake.lock pins (`nix flake update` moves it).
#
#   nix-hive deploy -c example/flake portico '*'      (the output nixHive; or -c DIR#ATTR)
{
  description = "nix-hive example: portico (jump host, relay store) and www hosts behind it";

  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-26.11";

  outputs = inputs@{ self, nixpkgs }:
    let
      # Instance discovery: terraform or pulumi writes instances.json (addresses, pinned host
      # keys, extra ssh options); this file gives each instance its role.
      discovered = builtins.fromJSON (builtins.readFile ./instances.json);
      wwwNames = builtins.filter (n: builtins.match "www-.*" n != null) (builtins.attrNames discovered);
      instance = name: extra: {
        ssh = { Hostname = discovered.${name}.address; } // (discovered.${name}.ssh or { }) // (extra.ssh or { });
      } // (if discovered.${name} ? hostKey then { inherit (discovered.${name}) hostKey; } else { })
        // builtins.removeAttrs extra [ "ssh" ];

      common = { ... }: {
        services.openssh.enable = true;
        nix.settings.trusted-users = [ "root" ];
      };
    in
    {
      nixHive = {
        # The secret key that signs every closure. A string naming a file OUTSIDE the flake:
        # Nix copies a flake's files into the (world-readable) store to evaluate it, so a key
        # inside it, written ./hive.sec, would be there too (nix-hive refuses store paths).
        signingKey = "/etc/nix-hive/hive.sec";

        systems = {
          portico = {
            inherit nixpkgs; # built with nixpkgs.lib.nixosSystem's eval-config.nix: no NIX_PATH
            tags = [ "edge" ];
            configuration = { imports = [ common ]; networking.hostName = "portico"; };
          };
          www = {
            inherit nixpkgs;
            specialArgs = { inherit inputs; }; # modules may take `inputs` as an argument
            tags = [ "web" ];
            configuration = { lib, inputs, ... }: {
              imports = [ common ];
              networking.hostName = "";  # each www host names itself (DHCP, cloud metadata)
              system.name = "www";  # the one closure all of them run: nixos-system-www
              services.nginx.enable = true;
              nix.settings = {
                # Root on a www host reaches portico with its own ssh configuration.
                substituters = [ "ssh://portico" ];
                # hive.pub, the public half of the signing key, may live in the flake.
                trusted-public-keys = lib.optional (builtins.pathExists ./hive.pub) (builtins.readFile ./hive.pub);
              };
            };
          };
        };

        instances = {
          portico = instance "portico" { system = "portico"; };
        } // builtins.listToAttrs (map
          (name: {
            inherit name;
            value = instance name {
              system = "www";
              store = "ssh://portico"; # www hosts substitute from portico ...
              ssh.ProxyJump = "portico"; # ... and are reached through it
            };
          })
          wwwNames);
      };
    };
}

# The example fleet: a jump host that is also the relay store, and web servers behind it.
#
#   nix-hive deploy -c example portico '*'
#
# builds the two systems once, copies both to portico, activates portico, then has each www
# host substitute its system from portico (signed paths) and activates them.
let
  # Instance discovery: a tool such as terraform or pulumi writes instances.json (addresses,
  # pinned host keys, extra ssh options); this file gives each instance its role.
  discovered = builtins.fromJSON (builtins.readFile ./instances.json);
  isWww = name: builtins.match "www-.*" name != null;
  wwwNames = builtins.filter isWww (builtins.attrNames discovered);

  instance = name: extra:
    let host = discovered.${name}; in
    {
      ssh = { Hostname = host.address; } // (host.ssh or { }) // (extra.ssh or { });
    }
    // (if host ? hostKey then { inherit (host) hostKey; } else { })
    // builtins.removeAttrs extra [ "ssh" ];
in
{
  # NIX_PATH entries used to build the systems. A channel URL pins nixpkgs for the whole
  # fleet; a system may override it (systems.<s>.paths), `-I nixpkgs=...` overrides both.
  paths.nixpkgs = "https://nixos.org/channels/nixos-26.11/nixexprs.tar.xz";

  # The secret key that signs every closure before it leaves this machine. Written as a path
  # literal: nix-hive reads its file name and never copies it into the Nix store.
  # Create one with: nix-store --generate-binary-cache-key hive-example secrets/hive.sec secrets/hive.pub
  signingKey = if builtins.pathExists ./secrets/hive.sec then ./secrets/hive.sec else null;

  systems = {
    portico = { configuration = ./portico.nix; tags = [ "edge" ]; };
    www = { configuration = ./www.nix; tags = [ "web" ]; };
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
}

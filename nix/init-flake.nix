# A nix-hive deployment in a flake (written by `nix-hive init --flake`): one jump host that
# is also the relay store, and web servers behind it, built with the nixpkgs flake.lock pins.
# Edit, then:
#
#   nix-hive list                      the instances and systems, validated (locks the flake)
#   nix-hive deploy portico 'www-*'    build once, push through portico, activate
#   nix flake update                   move nixpkgs; the next deployment rebuilds
{
  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-26.11";

  outputs = inputs@{ self, nixpkgs }: {
    nixHive = {
      # The secret key that signs closures, so hosts accept them from the relay: a string
      # naming a file OUTSIDE this flake (Nix copies a flake's files into the store). Create it
      #   nix-store --generate-binary-cache-key hive-1 /etc/nix-hive/hive.sec /etc/nix-hive/hive.pub
      signingKey = null; # "/etc/nix-hive/hive.sec"

      # buildHost = "portico";   # build there instead of here: closures then go host to host

      systems = {
        portico = {
          inherit nixpkgs; # built with this nixpkgs' nixos/lib/eval-config.nix, as nixosSystem does
          configuration = { ... }: {
            networking.hostName = "portico";
            services.openssh.enable = true;
          };
        };
        www = {
          inherit nixpkgs;
          specialArgs = { inherit inputs; }; # modules may take `inputs`
          configuration = { inputs, ... }: {
            networking.hostName = "";  # each www host names itself (DHCP, cloud metadata)
            system.name = "www";  # the one closure all of them run: nixos-system-www
            services.openssh.enable = true;
            services.nginx.enable = true;
            # Substitute from the relay, trusting the deployment's key.
            nix.settings.substituters = [ "ssh://portico" ];
            # nix.settings.trusted-public-keys = [ "hive-1:…" ];
          };
        };
      };

      instances = {
        portico = {
          system = "portico";
          ssh = { Hostname = "portico.example.com"; User = "root"; };
          # hostKey = "ssh-ed25519 AAAA…";   # pin it: nix-hive then accepts this key only
        };
        www-1 = {
          system = "www";
          store = "ssh://portico"; # substitute from portico: the deployer sends it once
          ssh = { Hostname = "10.0.0.11"; ProxyJump = "portico"; User = "root"; };
        };
      };
    };
  };
}

# A nix-hive deployment (written by `nix-hive init`): one jump host that is also the relay
# store, and web servers behind it. Edit, then:
#
#   nix-hive list                      the instances and systems, validated
#   nix-hive plan portico 'www-*'      what a deployment would do
#   nix-hive deploy portico 'www-*'    build once, push through portico, activate
{
  # NIX_PATH entries the systems are built with (-I nixpkgs=… overrides them).
  paths.nixpkgs = "https://nixos.org/channels/nixos-26.11/nixexprs.tar.xz";

  # The secret key that signs closures, so hosts accept them from the relay. Create it with
  #   nix-store --generate-binary-cache-key hive-1 secrets/hive.sec secrets/hive.pub
  # A path literal: nix-hive reads the file's name, never copies it into the Nix store.
  signingKey = if builtins.pathExists ./secrets/hive.sec then ./secrets/hive.sec else null;

  # buildHost = "portico";   # build there instead of here: closures then go host to host

  systems = {
    portico.configuration = { ... }: {
      networking.hostName = "portico";
      services.openssh.enable = true;
    };
    www.configuration = { ... }: {
      networking.hostName = "";  # each www host names itself (DHCP, cloud metadata)
      system.name = "www";  # the one closure all of them run: nixos-system-www
      services.openssh.enable = true;
      services.nginx.enable = true;
      # Substitute from the relay, trusting the deployment's key (secrets/hive.pub).
      nix.settings.substituters = [ "ssh://portico" ];
      # nix.settings.trusted-public-keys = [ "hive-1:…" ];
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
      store = "ssh://portico";            # substitute from portico: the deployer sends it once
      ssh = { Hostname = "10.0.0.11"; ProxyJump = "portico"; User = "root"; };
    };
  };
}

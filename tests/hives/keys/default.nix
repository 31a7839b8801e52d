# Keys in the lab: a relay (portico) and web hosts behind it, with a key from each source.
# The test writes secrets/db-password and secrets/tls.pem, and sets KEYTEST_TOKEN (the text
# key's content) and KEYTEST_GHOST=1 (a key for a user no host has) in the environment.
let
  discovered = builtins.fromJSON (builtins.readFile ./instances.json);
  host = import ./lab-host.nix ./instances.json;
  www = builtins.filter (n: builtins.match "www-.*" n != null) (builtins.attrNames discovered);
  ghost = builtins.getEnv "KEYTEST_GHOST" == "1";
in
{
  signingKey = ./secrets/hive.sec;
  keys.db-password = { keyFile = ./secrets/db-password; user = "deploy"; group = "deploy"; permissions = "0640"; };
  keys.api-token = { text = builtins.getEnv "KEYTEST_TOKEN"; destination = "/run/keys/api/token"; };
  keys.tls = { keyCommand = [ "cat" (toString ./secrets/tls.pem) ]; uploadAt = "post-activation"; permissions = "0400"; };
  keys.ghost = { text = "boo"; user = "nobody-here"; };
  systems.edge.configuration = { networking.hostName = "edge"; };
  systems.web = {
    configuration = { networking.hostName = "web"; };
    keys = [ "db-password" "api-token" "tls" ];
  };
  instances = {
    portico = host "portico" { system = "edge"; };
  } // builtins.listToAttrs (map (name: {
    inherit name;
    value = host name ({ system = "web"; store = "ssh://portico"; ssh.ProxyJump = "portico"; }
      // (if ghost && name == "www-2" then { keys = [ "ghost" ]; } else { }));
  }) www);
}

# An HTTP binary cache as the relay: the web hosts substitute from http://cache:8080 (a static
# server in the cache host's namespace, serving /run/nix-cache); nix-hive writes the cache
# through the cache host's own Nix over ssh. HTTPCACHE_UPLOAD (environment) overrides the
# upload URL (a test makes it fail).
let
  discovered = builtins.fromJSON (builtins.readFile ./instances.json);
  host = import ./lab-host.nix ./instances.json;
  upload = let u = builtins.getEnv "HTTPCACHE_UPLOAD"; in
    if u == "" then "ssh://cache?remote-store=file:///run/nix-cache" else u;
  www = builtins.filter (n: builtins.match "www-.*" n != null) (builtins.attrNames discovered);
in
{
  signingKey = ./secrets/hive.sec;
  stores."http://cache:8080".upload = upload;
  systems.edge.configuration = { networking.hostName = "edge"; standin.payloadBytes = 4096; };
  systems.cache.configuration = { networking.hostName = "cache"; standin.payloadBytes = 4096; };
  systems.web.configuration = { networking.hostName = "web"; };
  instances = {
    portico = host "portico" { system = "edge"; };
    cache = host "cache" { system = "cache"; ssh.ProxyJump = "portico"; };
  } // builtins.listToAttrs (map (name: {
    inherit name;
    value = host name { system = "web"; store = "http://cache:8080"; ssh.ProxyJump = "portico"; };
  }) www);
}

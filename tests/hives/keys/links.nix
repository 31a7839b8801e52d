# Keys whose destinations another user of the host could redirect (tests/test_keys_hostile.py):
# on portico, /run/keys/app is the deploy user's, who made /run/keys/app/sub a symbolic link to
# /etc and /run/keys/app/own a directory of its own; on www-1, /run/keys itself is a symbolic
# link to /etc. KEYTEST_LINKS_TOKEN is every key's content, KEYTEST_LINKS_KEY portico's key.
let
  host = import ./lab-host.nix ./instances.json;
  token = builtins.getEnv "KEYTEST_LINKS_TOKEN";
in
{
  signingKey = ./secrets/hive.sec;
  keys.through-link = { text = token; destination = "/run/keys/app/sub/nix-hive-escape"; };
  keys.in-own-dir = { text = token; destination = "/run/keys/app/own/nix-hive-escape"; };
  keys.run-keys = { text = token; destination = "/run/keys/nix-hive-escape"; };
  systems.plain = {
    configuration = { networking.hostName = "plain"; };
  };
  instances.portico = host "portico" { system = "plain"; keys = [ (builtins.getEnv "KEYTEST_LINKS_KEY") ]; };
  instances.www-1 = host "www-1" { system = "plain"; keys = [ "run-keys" ]; };
}

# Many keys per host (tests/test_keys_many.py): KEYTEST_MANY keys k0.. read from
# secrets/many/kN (binary bytes the test writes), with destinations holding spaces, a
# backslash and a non-ASCII letter, various owners and modes, and secrets/many-large as the
# large key; portico and www-1 have them all. With KEYTEST_MANY_BAD=1, www-1 also has, in the
# middle of them, a key for a user no host has and one in /run/keys/app, a directory the test
# gives to the deploy user.
let
  host = import ./lab-host.nix ./instances.json;
  env = builtins.getEnv;
  count = builtins.fromJSON (env "KEYTEST_MANY");
  bad = env "KEYTEST_MANY_BAD" == "1";
  names = builtins.genList (i: "k${toString i}") count;
  index = name: builtins.fromJSON (builtins.substring 1 9 name);
  owner = name: if builtins.bitAnd (index name) 1 == 1 then "deploy" else "root";
  modes = [ "0600" "0640" "400" ];
  many = builtins.listToAttrs (map (name: {
    inherit name;
    value = {
      keyFile = ./secrets/many + "/${name}";
      destination = "/run/keys/many/${name} odd \\ é ";
      user = owner name; group = owner name;
      permissions = builtins.elemAt modes (index name - index name / 3 * 3);
    };
  }) names);
  half = builtins.genList (i: "k${toString i}") (count / 2);
  rest = builtins.filter (n: !(builtins.elem n half)) names;
in
{
  signingKey = ./secrets/hive.sec;
  keys = many // {
    large = { keyFile = ./secrets/many-large; destination = "/run/keys/many/large"; permissions = "0640"; };
    ghost = { text = "boo"; user = "nobody-here"; };
    refused = { text = "no"; destination = "/run/keys/app/refused"; };
  };
  systems.plain = {
    configuration = { networking.hostName = "plain"; };
    keys = half ++ [ "large" ] ++ rest;
  };
  systems.bad = {
    configuration = { networking.hostName = "plain"; };
    keys = half ++ [ "ghost" "large" "refused" ] ++ rest;
  };
  instances.portico = host "portico" { system = "plain"; };
  instances.www-1 = host "www-1" { system = if bad then "bad" else "plain"; };
}

# expect: signingKey: /
# expect: is not a Nix secret key
{
  signingKey = ./garbage.key;
  systems.www = { configuration = { }; };
  instances.www-1 = { system = "www"; };
}

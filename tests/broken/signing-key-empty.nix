# expect: signingKey: /
# expect: is empty
{
  signingKey = ./empty.key;
  systems.www = { configuration = { }; };
  instances.www-1 = { system = "www"; };
}

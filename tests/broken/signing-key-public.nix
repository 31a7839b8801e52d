# expect: signingKey: /
# expect: is a public key
{
  signingKey = ./public-key.pub;
  systems.www = { configuration = { }; };
  instances.www-1 = { system = "www"; };
}

# expect: signingKey: the secret key is in the Nix store
{
  signingKey = "${./dummy.sec}";
  systems.web = { configuration = { }; };
  instances.web-1 = { system = "web"; };
}

# expect: signingKey: /
# expect: is a directory
{
  signingKey = ./.;
  systems.web = { configuration = { }; };
  instances.web-1 = { system = "web"; };
}

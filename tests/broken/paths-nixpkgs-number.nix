# expect: paths.nixpkgs: 2405 is not a string
{
  paths.nixpkgs = 2405;
  systems.web = { configuration = { }; };
  instances.web-1 = { system = "web"; };
}

# expect: instances.web-1.store: "portico" is not a Nix store URL
{
  systems.web = { configuration = { }; };
  instances.web-1 = { system = "web"; store = "portico"; };
}

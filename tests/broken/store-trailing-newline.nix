# expect: instances.web-1.store: "ssh://portico\n" is not a Nix store URL
{
  systems.web = { configuration = { }; };
  instances.web-1 = { system = "web"; store = "ssh://portico\n"; };
}

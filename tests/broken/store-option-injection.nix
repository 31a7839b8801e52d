# expect: instances.web-1.store: "ssh://-oProxyCommand=x" is not a Nix store URL
{
  systems.web = { configuration = { }; };
  instances.web-1 = { system = "web"; store = "ssh://-oProxyCommand=x"; };
}

# expect: must evaluate to an attribute set
{ pkgs }: {
  systems.web = { configuration = { }; };
  instances.web-1 = { system = "web"; };
}

# expect: systems: a list is not an attribute set
{
  systems = [ { configuration = { }; } ];
  instances.web-1 = { system = "web"; };
}

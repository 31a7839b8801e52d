# expect: systems: "web.v2" is not a system name
{
  systems."web.v2" = { configuration = { }; };
  instances.web-1 = { system = "web.v2"; };
}

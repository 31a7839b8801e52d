# expect: systems.web: missing attribute configuration
{
  systems.web = { tags = [ "web" ]; };
  instances.web-1 = { system = "web"; };
}

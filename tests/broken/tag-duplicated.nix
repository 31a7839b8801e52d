# expect: systems.web.tags: a tag is repeated
{
  systems.web = { configuration = { }; tags = [ "web" "edge" "web" ]; };
  instances.web-1 = { system = "web"; };
}

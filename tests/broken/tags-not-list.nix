# expect: instances.web-1.tags: "frontend" is not a list
{
  systems.web = { configuration = { }; };
  instances.web-1 = { system = "web"; tags = "frontend"; };
}

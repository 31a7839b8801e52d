# expect: instances.web-1.tags[0]: "front end" is not a tag
{
  systems.web = { configuration = { }; };
  instances.web-1 = { system = "web"; tags = [ "front end" ]; };
}

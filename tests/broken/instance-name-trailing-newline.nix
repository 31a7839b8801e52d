# expect: instances: "web-1\n" is not an instance name
{
  systems.web = { configuration = { }; };
  instances."web-1\n" = { system = "web"; };
}

# expect: instances: "" is not an instance name
{
  systems.web = { configuration = { }; };
  instances."" = { system = "web"; };
}

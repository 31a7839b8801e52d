# expect: instances: "web 1" is not an instance name
{
  systems.web = { configuration = { }; };
  instances."web 1" = { system = "web"; };
}

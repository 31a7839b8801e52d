# expect: instances: "-oProxyCommand=x" is not an instance name
{
  systems.web = { configuration = { }; };
  instances."-oProxyCommand=x" = { system = "web"; };
}

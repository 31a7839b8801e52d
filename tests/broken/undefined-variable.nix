# expect: cannot evaluate: undefined variable 'webConfig'
{
  systems.web = { configuration = webConfig; };
  instances.web-1 = { system = "web"; };
}

# expect: instances.web-1.checks.health
{
  systems.web = { configuration = { }; };
  instances.web-1 = { system = "web"; checks.health = { http = "localhost:80/health"; }; };
}

# expect: systems.web.checks.up
# expect: this attribute set is not a health check
{
  systems.web = { configuration = { }; checks.up = { command = "true"; http = "http://127.0.0.1/"; }; };
  instances.web-1 = { system = "web"; };
}

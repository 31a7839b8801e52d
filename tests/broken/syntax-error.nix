# expect: cannot evaluate: syntax error
{
  systems.web = { configuration = { }; };
  instances.web-1 = { system = "web"
}

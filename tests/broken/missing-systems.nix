# expect: missing attribute systems
{
  instances.web-1 = { system = "web"; };
}

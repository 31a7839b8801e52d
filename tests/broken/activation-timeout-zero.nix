# expect: activationTimeout: 0 is not a number of seconds, at least 1
{
  activationTimeout = 0;
  systems.web = { configuration = { }; };
  instances.web-1 = { system = "web"; };
}

# expect: instances.web-1.sytem: unknown attribute (expected one of: activationTimeout, checks, confirmTimeout, elevate, hostKey, keys, rebootTimeout, ssh, store, system, tags)
{
  systems.web = { configuration = { }; };
  instances.web-1 = { system = "web"; sytem = "web"; };
}

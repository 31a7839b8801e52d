# expect: instance: unknown attribute (expected one of: activationTimeout, buildHost, confirmTimeout, elevate, instances, keys, paths, rebootTimeout, signingKey, stores, systems)
{
  systems.web = { configuration = { }; };
  instances = { };
  instance.web-1 = { system = "web"; };
}

# expect: instance: unknown attribute (expected one of: activationTimeout, buildHost, confirmTimeout, instances, keys, paths, signingKey, stores, systems)
{
  systems.web = { configuration = { }; };
  instances = { };
  instance.web-1 = { system = "web"; };
}

# expect: build-host-number.nix: buildHost: 3 is not a string or null
{
  buildHost = 3;
  systems.web.configuration = { };
  instances.w = { system = "web"; };
}
